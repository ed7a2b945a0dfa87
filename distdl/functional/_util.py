"""Helpers shared by the functional ops: operand coercion and undoing broadcasts."""

import numbers

from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``, undoing NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def as_tensor(value, like):
    """A Tensor for ``value``; Python numbers take ``like``'s dtype so float32 stays float32."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Number):
        return Tensor._from_op(xp_of(like.data).asarray(value, dtype=like.data.dtype), None, 0)
    return Tensor(value)


def _kind(dtype):
    return "float" if dtype.kind in "fc" else "int" if dtype.kind in "iu" else dtype.kind


def binary_operands(a, b, op):
    """Coerce ``a`` and ``b`` to Tensors; refuse mixing float and integer tensors."""
    like = a if isinstance(a, Tensor) else b
    a, b = as_tensor(a, like), as_tensor(b, like)
    ka, kb = _kind(a.data.dtype), _kind(b.data.dtype)
    if ka != kb and "float" in (ka, kb) and "int" in (ka, kb):
        raise TypeError(
            f"{op}: cannot combine tensors of dtype {a.dtype} and {b.dtype}; cast the integer one "
            f"first, e.g. t.astype(np.float32) (distdl does not silently promote integers to float)"
        )
    return a, b


def normalize_axis(axis, ndim):
    """``axis`` (None, int or tuple; negatives allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, numbers.Integral):
        axis = (axis,)
    out = []
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
        out.append(a % ndim)
    return tuple(sorted(out))

