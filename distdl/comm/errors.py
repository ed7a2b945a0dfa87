"""Errors of distributed runs. Each message names this rank, the peers concerned, the collective
and its sequence number, and what to check."""


class DistError(RuntimeError):
    """Base of every error raised by distdl's communication layer."""


class RendezvousError(DistError):
    """The workers could not assemble: a wrong run token, rank or world size, or ranks that never arrived."""


class PeerLostError(DistError):
    """A peer went away (its process died or closed) while this rank needed it."""


class CollectiveTimeoutError(DistError):
    """A peer did not take part in a collective within the timeout (DISTDL_TIMEOUT)."""


class CollectiveMismatchError(DistError):
    """Ranks called different collectives, or the same one with different op, dtype, size or root."""


class ProtocolError(DistError):
    """An authenticated peer sent a frame that breaks the wire protocol (its length, sender or layout)."""
