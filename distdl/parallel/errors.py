"""Errors of data-parallel training: each names the step, and the ranks and parameter concerned."""

from distdl.comm.errors import CollectiveMismatchError


class NonFiniteGradientError(FloatingPointError):
    """A gradient was NaN or Inf on some rank: averaged, it would have reached every replica."""


class NonFiniteLossError(FloatingPointError):
    """The loss of a batch was NaN or Inf (raised before backward, as Keras's TerminateOnNaN stops)."""


class StepMismatchError(CollectiveMismatchError):
    """The ranks averaged the gradients of different steps: one skipped or added a step."""
