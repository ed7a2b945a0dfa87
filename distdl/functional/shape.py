"""Shape and indexing ops: reshape, transpose, indexing, concatenate, stack."""

import itertools
import numbers

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import scatter_add, xp_of
from distdl.functional._util import normalize_axis


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, g):
        if self.axes is None:
            return g.transpose()
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return g.transpose(inverse)


def _is_basic(index):
    """True when ``index`` uses only ints, slices, None and Ellipsis (so it picks each element once)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral)) for p in parts)


class GetItem(Function):
    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, g):
        xp = xp_of(g)
        grad = xp.zeros(self.shape, self.dtype)
        if _is_basic(self.index):
            grad[self.index] = g
        else:  # integer or boolean arrays may pick an element several times
            scatter_add(grad, self.index, g)
        return grad


class Concatenate(Function):
    def forward(self, *arrays, axis):
        xp = xp_of(arrays[0])
        self.axis = axis
        self.splits = list(itertools.accumulate(a.shape[axis] for a in arrays[:-1]))
        return xp.concatenate(arrays, axis=axis)

    def backward(self, g):
        return tuple(xp_of(g).split(g, self.splits, axis=self.axis))


def reshape(x, shape):
    return Reshape.apply(x, shape=tuple(shape) if not isinstance(shape, numbers.Integral) else (shape,))


def flatten(x, start_dim=0, end_dim=-1):
    """Merge axes ``start_dim..end_dim`` into one (torch.flatten)."""
    start, end = start_dim % x.ndim if x.ndim else 0, end_dim % x.ndim if x.ndim else 0
    return reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1:])


def transpose(x, axes=None):
    """Permute axes (NumPy's ``transpose``); ``axes=None`` reverses them."""
    if axes is not None:
        axes = tuple(a % x.ndim for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of a {x.ndim}-d tensor's axes")
    return Transpose.apply(x, axes=axes)


def squeeze(x, axis=None):
    axes = normalize_axis(axis, x.ndim) if axis is not None else tuple(i for i, n in enumerate(x.shape) if n == 1)
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in axes))


def unsqueeze(x, axis):
    axis = axis % (x.ndim + 1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def _plain_index(index):
    """Replace Tensors inside an index by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(p.data if isinstance(p, Tensor) else p for p in index)
    return index


def getitem(x, index):
    """``x[index]`` with gradient, for slices, ints, integer arrays and boolean masks."""
    return GetItem.apply(x, index=_plain_index(index))


def concatenate(tensors, axis=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    return Concatenate.apply(*tensors, axis=axis % tensors[0].ndim)


def stack(tensors, axis=0):
    """Join tensors of one shape along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    if any(t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    return concatenate([unsqueeze(t, axis) for t in tensors], axis=axis % (tensors[0].ndim + 1))
