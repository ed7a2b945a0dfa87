"""Inverted dropout: zero a fraction ``p`` of values in training, scale the rest by 1/(1-p)."""

from distdl import backend
from distdl.autograd.function import Function
from distdl.backend import xp_of


class Dropout(Function):
    def forward(self, x, p):
        xp = xp_of(x)
        self.mask = backend.keep_mask(x.shape, p, xp) * x.dtype.type(1 / (1 - p))
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(input, p=0.5, training=True, inplace=False):
    """The mask is drawn from the generator that ``dl.seed`` seeds; ``inplace`` as torch's, computed out of place."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: probability p must be in [0, 1], got {p}")
    if not training or p == 0:
        return input
    if p == 1:
        return input * 0.0
    return Dropout.apply(input, p=p)
