"""Shape and indexing ops: reshape, permute/transpose (torch's meanings), indexing, cat, stack."""

import itertools
import numbers

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import scatter_add, xp_of
from distdl.functional._util import normalize_axis, normalize_dim, numpy_alias


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape)


class Permute(Function):
    def forward(self, x, dims):
        self.dims = dims
        return x.transpose(dims)

    def backward(self, g):
        inverse = [0] * len(self.dims)
        for position, dim in enumerate(self.dims):
            inverse[dim] = position
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


def permute(x, dims):
    """Reorder all dimensions: output dimension i is input dimension ``dims[i]`` (torch.permute,
    NumPy's ``transpose(axes)``)."""
    dims = tuple(normalize_dim(d, x.ndim) for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: dims {dims} are not a permutation of a {x.ndim}-d tensor's dimensions")
    return Permute.apply(x, dims=dims)


def transpose(x, dim0, dim1):
    """Swap dimensions ``dim0`` and ``dim1`` (torch.transpose; for NumPy's full permutation use ``permute``)."""
    dims = list(range(x.ndim))
    dim0, dim1 = normalize_dim(dim0, x.ndim), normalize_dim(dim1, x.ndim)
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return Permute.apply(x, dims=tuple(dims))


def squeeze(x, dim=None, *, axis=None):
    """Drop size-1 dimensions: all of them, or those of ``dim`` (NumPy's ``axis``) that have size 1, as torch."""
    dim = numpy_alias("squeeze", "dim", dim, None, "axis", axis)
    axes = normalize_axis(dim, x.ndim) if dim is not None else range(x.ndim)
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if not (i in axes and n == 1)))


def unsqueeze(x, dim=None, *, axis=None):
    """Insert a size-1 dimension at ``dim`` (NumPy's ``axis``), counted in the output's dimensions."""
    dim = numpy_alias("unsqueeze", "dim", dim, None, "axis", axis)
    if dim is None:
        raise TypeError("unsqueeze: give the position of the new dimension, e.g. unsqueeze(x, 0)")
    dim = normalize_dim(dim, x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


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


def cat(tensors, dim=0, *, axis=None):
    """Join tensors along an existing dimension ``dim`` (torch.cat; NumPy's ``concatenate`` with ``axis``)."""
    dim = numpy_alias("cat", "dim", dim, 0, "axis", axis)
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    return Concatenate.apply(*tensors, axis=normalize_dim(dim, tensors[0].ndim))


concatenate = cat


def stack(tensors, dim=0, *, axis=None):
    """Join tensors of one shape along a new dimension ``dim`` (NumPy's ``axis``)."""
    dim = numpy_alias("stack", "dim", dim, 0, "axis", axis)
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    if any(t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    dim = normalize_dim(dim, tensors[0].ndim + 1)
    return cat([unsqueeze(t, dim) for t in tensors], dim=dim)
