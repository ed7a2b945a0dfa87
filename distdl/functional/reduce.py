"""Reductions over axes (NumPy's ``axis``/``keepdims``): sum, mean, max, min, var."""

import builtins
import math

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._util import normalize_axis


def _expand(g, shape, axes, keepdims):
    """Reshape a reduced gradient so that it broadcasts against the input again."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return g


class Sum(Function):
    def forward(self, x, axes, keepdims):
        self.shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return x.sum(axis=axes, keepdims=keepdims)

    def backward(self, g):
        g = _expand(g, self.shape, self.axes, self.keepdims)
        return xp_of(g).broadcast_to(g, self.shape)


class Max(Function):
    """The gradient is shared equally between tied maxima."""

    reduce = "max"

    def forward(self, x, axes, keepdims):
        out = getattr(x, self.reduce)(axis=axes, keepdims=True)
        self.hit = x == out
        self.shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def backward(self, g):
        g = _expand(g, self.shape, self.axes, self.keepdims)
        hit = self.hit
        return g * hit / hit.sum(axis=self.axes, keepdims=True).astype(g.dtype)


class Min(Max):
    reduce = "min"


def sum(x, axis=None, keepdims=False):
    return Sum.apply(x, axes=normalize_axis(axis, x.ndim), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    axes = normalize_axis(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    return Sum.apply(x, axes=axes, keepdims=keepdims) * (1.0 / builtins.max(count, 1))


def max(x, axis=None, keepdims=False):
    return Max.apply(x, axes=normalize_axis(axis, x.ndim), keepdims=keepdims)


def min(x, axis=None, keepdims=False):
    return Min.apply(x, axes=normalize_axis(axis, x.ndim), keepdims=keepdims)


def var(x, axis=None, ddof=0, keepdims=False):
    """Variance with NumPy's default ``ddof=0`` (torch's ``var`` defaults to ddof=1)."""
    axes = normalize_axis(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    centered = x - mean(x, axis=axes, keepdims=True)
    return sum(centered * centered, axis=axes, keepdims=keepdims) * (1.0 / builtins.max(count - ddof, 1))
