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


def check_same_dtype(op, input, weight):
    """Refuse an input whose dtype differs from the weights', as torch does: no silent promotion.

    A float64 batch into a float32 model would otherwise compute in float64 and hand float64
    gradients to float32 parameters, at twice the memory and time, without a word.
    """
    if weight is None or input.dtype == weight.dtype:
        return
    cast = f"cast the input, e.g. x.astype(np.{weight.dtype}) or dl.tensor(x, dtype=np.{weight.dtype})"
    if input.dtype.kind == "f":
        cast += f", or convert the model to the input's dtype with model.to(np.{input.dtype})"
    raise TypeError(f"{op}: the input is {input.dtype} but the weights are {weight.dtype}; "
                    f"distdl (like torch) does not mix dtypes silently: {cast}")


def numpy_alias(op, name, value, default, alias, alias_value):
    """torch's argument ``name`` or its NumPy alias (``axis`` for ``dim``, ``keepdims`` for ``keepdim``).

    The alias counts when it is given (not None); giving both is an error, since a
    silent choice between them would hide a typo.
    """
    if alias_value is None:
        return value
    if value != default:
        raise TypeError(f"{op}: got both {name}={value!r} and {alias}={alias_value!r}, which are one argument "
                        f"(torch's name and NumPy's); give only one")
    return alias_value


def dim_args(op, dim, keepdim, axis, keepdims):
    """(dim, keepdim) from torch's names or NumPy's ``axis``/``keepdims``."""
    return numpy_alias(op, "dim", dim, None, "axis", axis), numpy_alias(op, "keepdim", keepdim, False, "keepdims", keepdims)


def normalize_dim(dim, ndim):
    """One dimension index (negatives count from the end) as a non-negative int."""
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"a dimension must be an int, got {dim!r}")
    return normalize_axis(dim, ndim)[0]


def normalize_axis(axis, ndim):
    """``axis`` (None, int or tuple; negatives allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, numbers.Integral):
        axis = (axis,)
    out = []
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"dimension {a} is out of range for a tensor of {ndim} dimensions")
        out.append(a % ndim)
    return tuple(sorted(out))

