"""Reductions over dimensions: sum, mean, max, min, var, argmax, argmin.

Arguments are torch's ``dim``/``keepdim``, with NumPy's ``axis``/``keepdims`` as aliases.
Where torch and NumPy mean different things by one op, the name used picks the meaning:
``max(x, dim)`` gives torch's (values, indices), ``max(x, axis=...)`` NumPy's values;
``var`` is torch's unbiased estimate unless NumPy's ``axis``/``keepdims`` are used.
"""

import builtins
import math
import numbers
from collections import namedtuple

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import dim_args, normalize_axis, normalize_dim, numpy_alias

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])
ValuesIndices.__doc__ = "What torch's max(x, dim) and min(x, dim) return: the values and where they are."


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


def sum(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    dim, keepdim = dim_args("sum", dim, keepdim, axis, keepdims)
    return Sum.apply(x, axes=normalize_axis(dim, x.ndim), keepdims=keepdim)


def mean(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    dim, keepdim = dim_args("mean", dim, keepdim, axis, keepdims)
    axes = normalize_axis(dim, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    return Sum.apply(x, axes=axes, keepdims=keepdim) * (1.0 / builtins.max(count, 1))


def _extremum(cls, arg, name, x, dim, keepdim, axis, keepdims):
    """torch's (values, indices) along one ``dim``; the values alone for all dims or NumPy's ``axis``."""
    numpy_style = axis is not None or keepdims is not None
    dim, keepdim = dim_args(name, dim, keepdim, axis, keepdims)
    values = cls.apply(x, axes=normalize_axis(dim, x.ndim), keepdims=keepdim)
    if numpy_style or not isinstance(dim, numbers.Integral):  # all dims, several (torch's amax), or NumPy's
        return values
    return ValuesIndices(values, arg(x, dim, keepdim))


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """The largest value; along one ``dim`` the pair (values, indices), as torch.max."""
    return _extremum(Max, argmax, "max", x, dim, keepdim, axis, keepdims)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """The smallest value; along one ``dim`` the pair (values, indices), as torch.min."""
    return _extremum(Min, argmin, "min", x, dim, keepdim, axis, keepdims)


def _arg(reduce, x, dim, keepdim, axis, keepdims):
    """Indices (int64, outside the graph) of the extremum along ``dim``, or in the flattened tensor."""
    dim, keepdim = dim_args(f"arg{reduce}", dim, keepdim, axis, keepdims)
    data = x.data if isinstance(x, Tensor) else x
    if dim is None:
        index = getattr(data.reshape(-1), f"arg{reduce}")()
        out = index.reshape((1,) * data.ndim) if keepdim else index
    else:
        out = getattr(data, f"arg{reduce}")(axis=normalize_dim(dim, data.ndim), keepdims=keepdim)
    return Tensor._from_op(xp_of(data).asarray(out, dtype="int64"), None, 0)


def argmax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    return _arg("max", x, dim, keepdim, axis, keepdims)


def argmin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    return _arg("min", x, dim, keepdim, axis, keepdims)


def var(x, dim=None, *, correction=None, keepdim=False, axis=None, ddof=None, keepdims=None):
    """Variance with ``correction`` (torch's name; NumPy's ``ddof``) subtracted from the count.

    The default is torch's unbiased ``correction=1``, or NumPy's ``ddof=0`` when the call is
    spelled with NumPy's names (``axis``, ``keepdims``): each library's default for its own spelling.
    """
    numpy_style = axis is not None or keepdims is not None or ddof is not None
    correction = numpy_alias("var", "correction", correction, None, "ddof", ddof)
    if correction is None:
        correction = 0 if numpy_style else 1
    dim, keepdim = dim_args("var", dim, keepdim, axis, keepdims)
    axes = normalize_axis(dim, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    centered = x - mean(x, dim=axes, keepdim=True)
    return sum(centered * centered, dim=axes, keepdim=keepdim) * (1.0 / builtins.max(count - correction, 1))
