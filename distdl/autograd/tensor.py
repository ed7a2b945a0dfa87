"""Tensor: an array of NumPy or CuPy, the gradient it receives, and the op that made it."""

import itertools
import math
import numbers

import numpy as np

from distdl import backend, value_checks
from distdl.autograd import engine


class HookHandle:
    """Returned by hook registration; ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks):
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self):
        self._hooks.pop(self.id, None)


class ElementCount(int):
    """``tensor.size``: the number of elements (NumPy's ``.size``) that, called, is torch's ``size()``.

    NumPy users read ``.size`` as a count, torch users call ``.size()`` for the shape and
    ``.size(d)`` for one dimension: an int that can be called serves both, and neither
    gets a silently wrong answer.
    """

    def __new__(cls, shape):
        count = super().__new__(cls, math.prod(shape))
        count.shape = shape
        return count

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        if not isinstance(dim, numbers.Integral) or not -len(self.shape) <= dim < len(self.shape):
            raise IndexError(f"size({dim!r}): dimension out of range for a tensor of shape {self.shape} "
                             f"(expected an int in [{-len(self.shape)}, {len(self.shape) - 1}])")
        return self.shape[dim]


class Tensor:
    """A multi-dimensional array that records the ops applied to it, for ``backward()``.

    Args:
        data: array-like; NumPy and CuPy arrays keep their dtype, Python numbers and
            lists become the default float dtype (float32).
        requires_grad: accumulate a gradient into ``.grad`` on ``backward()``.
        dtype, device: optional conversion ("cpu", "cuda", "cuda:N").
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_idx", "_hooks", "_grad_into", "_grad_final",
                 "__weakref__")
    __array_priority__ = 1000  # numpy_array + tensor dispatches to Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = backend.as_array(data, dtype=dtype, device=device)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}; "
                "cast it first, e.g. dl.tensor(x.astype(np.float32), requires_grad=True)"
            )
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._idx = 0
        self._hooks = None
        self._grad_into = None  # a leaf's provider of where its gradient may be written (see engine._targets)
        self._grad_final = None  # callbacks run after its hooks: DistributedDataParallel's (engine._accumulate_leaf)

    @classmethod
    def _from_op(cls, data, ctx, idx):
        """Wrap an op's output without re-validating it (the hot path)."""
        t = cls.__new__(cls)
        t.data = data
        t.grad = None
        t.requires_grad = ctx is not None
        t._ctx = ctx
        t._idx = idx
        t._hooks = None
        t._grad_into = None
        t._grad_final = None
        return t

    # ---- properties -------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        """The element count as an int, and called, the shape: ``t.size()``, ``t.size(0)`` (see ElementCount)."""
        return ElementCount(self.data.shape)

    def numel(self):
        return self.data.size

    def dim(self):
        return self.data.ndim

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def T(self):
        """The dimensions reversed (a matrix's transpose)."""
        return F.permute(self, tuple(reversed(range(self.ndim))))

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    # ---- autograd ---------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate the gradient of this tensor into every leaf that requires one.

        Args:
            grad: d(something)/d(self), same shape; may be omitted for a scalar (one element).
            retain_graph: keep the graph so that backward can run through it again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the "
                "computation had requires_grad=True (or it ran under no_grad())"
            )
        xp = backend.xp_of(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() on a tensor of shape {self.shape} needs a gradient: pass "
                    f"grad= an array of shape {self.shape}, or reduce to a scalar first (e.g. loss.sum())"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape} but the tensor has shape {self.shape}")
        engine.backward(self, grad, retain_graph=retain_graph)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` once this leaf's gradient for a backward pass is final.

        It fires while backward still runs through earlier ops. DistributedDataParallel's
        own hook runs after every hook registered here, whenever it was registered: these see
        the local gradient and may change or replace it before it is averaged.
        """
        if self._ctx is not None:
            raise RuntimeError("post-accumulate-grad hooks can only be registered on leaf tensors")
        if self._hooks is None:
            self._hooks = {}
        handle = HookHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._from_op(self.data, None, 0)

    def requires_grad_(self, requires_grad=True):
        """Make this leaf record ops for backward (or stop); refused on an op's output, as torch does."""
        if self._ctx is not None and not requires_grad:
            raise RuntimeError(
                "requires_grad_(False) on a tensor computed by an op: only leaf tensors can change "
                "requires_grad. To use its value outside the graph, take y.detach()"
            )
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def zero_grad(self):
        self.grad = None

    # ---- conversion -------------------------------------------------------
    def numpy(self):
        """The data as a NumPy array (copied from the GPU when it lives there, after the queued input checks)."""
        value_checks.verify()
        return backend.to_device(self.data, "cpu")

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        value_checks.verify()  # this read waits for the device anyway: the queued input checks come first
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def astype(self, dtype):
        return F.astype(self, dtype)

    def float(self):
        return F.astype(self, np.float32)

    def double(self):
        return F.astype(self, np.float64)

    def to(self, target):
        """A copy on another device ("cpu", "cuda:N") or of another dtype."""
        if isinstance(target, str):
            try:
                target = np.dtype(target)
            except TypeError:  # not a dtype name, so a device name (an unknown one is reported there)
                return F.to_device(self, target)
        elif isinstance(target, int) and not isinstance(target, bool):
            return F.to_device(self, target)
        return F.astype(self, target)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=None):
        return self.to("cuda" if index is None else f"cuda:{index}")

    # ---- operators --------------------------------------------------------
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __pow__(self, exponent):
        return F.pow(self, exponent)

    def __rpow__(self, base):
        return F.pow(base, self)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pos__(self):
        return self

    def __getitem__(self, index):
        return F.getitem(self, index)

    # comparisons give plain boolean tensors, outside the graph
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._from_op(op(self.data, other), None, 0)

    def __lt__(self, other):
        return self._compare(other, np.less)

    def __le__(self, other):
        return self._compare(other, np.less_equal)

    def __gt__(self, other):
        return self._compare(other, np.greater)

    def __ge__(self, other):
        return self._compare(other, np.greater_equal)

    def __eq__(self, other):
        return self._compare(other, np.equal)

    def __ne__(self, other):
        return self._compare(other, np.not_equal)

    __hash__ = object.__hash__

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous: use .any() or .all()")
        value_checks.verify()  # a read of the device, as item(): the queued input checks come first
        return bool(self.data)

    def any(self):
        return bool(self.data.any())

    def all(self):
        return bool(self.data.all())

    # ---- methods over the functional ops ----------------------------------
    # torch's dim/keepdim, with NumPy's axis/keepdims as aliases: see distdl.functional.reduce
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return F.sum(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return F.mean(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The largest value; along one ``dim`` torch's (values, indices); with NumPy's ``axis`` the values."""
        return F.max(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return F.min(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def var(self, dim=None, *, correction=None, keepdim=False, axis=None, ddof=None, keepdims=None):
        """torch's unbiased variance (correction=1), or NumPy's ddof=0 when called with ``axis``."""
        return F.var(self, dim, correction=correction, keepdim=keepdim, axis=axis, ddof=ddof, keepdims=keepdims)

    def argmax(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return F.argmax(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def argmin(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return F.argmin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def view(self, *shape):
        """The same memory in another shape; as torch, refused where that would need a copy (use reshape)."""
        out = self.reshape(*shape)
        if self.data.size and not backend.xp_of(self.data).may_share_memory(out.data, self.data):
            raise RuntimeError(
                f"view{shape}: a tensor of shape {self.shape} with strides {self.data.strides} cannot be seen in "
                f"that shape without copying; use .reshape(...) (which copies when it must) instead"
            )
        return out

    def flatten(self, start_dim=0, end_dim=-1):
        return F.flatten(self, start_dim, end_dim)

    def transpose(self, *dims, dim0=None, dim1=None):
        """Swap two dimensions, as torch: ``x.transpose(0, 1)``. NumPy's permutation is ``permute``."""
        dims += tuple(d for d in (dim0, dim1) if d is not None)
        if len(dims) != 2 or not all(isinstance(d, numbers.Integral) for d in dims):
            raise TypeError(
                f"transpose(dim0, dim1) swaps two dimensions, as torch.transpose; got transpose{dims!r}. "
                f"For a permutation of all dimensions (NumPy's transpose) use permute(...), and .T to reverse them"
            )
        return F.transpose(self, *dims)

    def permute(self, *dims):
        """Reorder all dimensions: ``x.permute(2, 0, 1)`` or ``x.permute((2, 0, 1))``."""
        return F.permute(self, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)

    def squeeze(self, dim=None, *, axis=None):
        return F.squeeze(self, dim, axis=axis)

    def unsqueeze(self, dim=None, *, axis=None):
        return F.unsqueeze(self, dim, axis=axis)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def sqrt(self):
        return F.sqrt(self)

    def abs(self):
        return F.abs(self)

    def clip(self, min=None, max=None):
        return F.clip(self, min, max)

    def relu(self):
        return F.relu(self)

    def sigmoid(self):
        return F.sigmoid(self)

    def tanh(self):
        return F.tanh(self)

    def softmax(self, dim=-1, *, axis=None):
        return F.softmax(self, dim, axis=axis)

    def log_softmax(self, dim=-1, *, axis=None):
        return F.log_softmax(self, dim, axis=axis)


def tensor(data, requires_grad=False, dtype=None, device=None):
    """Make a Tensor; see :class:`Tensor` for how dtypes are kept."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


# Tensor's operator and method sugar calls the functional ops, which are built on
# the Tensor type above: imported last to break the cycle, in one explicit place.
from distdl import functional as F  # noqa: E402
