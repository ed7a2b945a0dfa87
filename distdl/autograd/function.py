"""The differentiable primitive: forward and backward on raw arrays, plus the graph node."""

from distdl.autograd.grad_mode import is_grad_enabled
from distdl.autograd.tensor import Tensor


class Edge:
    """What the walk needs of an op's input made by another op: that op and which of its outputs.

    A node keeps this rather than the input Tensor, so the input's array is freed as soon as
    nothing else holds it (a backward that reads it saves it itself). A leaf that needs a
    gradient is kept itself (its .grad receives it); an input that needs none, as None.
    """

    __slots__ = ("_ctx", "_idx", "shape")

    def __init__(self, tensor):
        self._ctx, self._idx, self.shape = tensor._ctx, tensor._idx, tensor.data.shape


class Function:
    """One op of the graph.

    Subclasses implement ``forward(*arrays, **options)`` returning an array (or a
    tuple of arrays) and ``backward(*grad_outputs)`` returning one gradient per
    positional input (``None`` where ``needs_input_grad`` is False). They keep
    only what backward needs, as attributes or through ``save_for_backward``.
    ``backward`` must never modify the gradients it is given (they may be shared), and
    must return new arrays or views, never an array it keeps (a leaf may adopt it).
    """

    inputs = ()
    needs_input_grad = ()
    output_meta = None  # (shape, dtype) of each output, for an op with several
    grad_into = None  # {input index: (array, scale)}: where backward may write scale x that input's gradient

    def target(self, index, result_dtype):
        """(array, scale) where backward may write input ``index``'s gradient times ``scale`` (None: as it is), or
        None. The engine offers it for a leaf whose whole gradient this node gives (``engine._targets``); an op
        that writes there returns that array as the gradient."""
        into = self.grad_into
        target = None if into is None else into.get(index)
        return target if target is not None and target[0].dtype == result_dtype else None

    def save_for_backward(self, *arrays):
        self.saved = arrays

    @classmethod
    def apply(cls, *inputs, **options):
        """Run forward on the inputs' arrays; record the node when a gradient is needed."""
        ctx = cls()
        output = ctx.forward(*[t.data for t in inputs], **options)
        needs = [t.requires_grad for t in inputs]  # lists, not generators: this runs for every op
        record = True in needs and is_grad_enabled()
        if record:
            ctx.inputs = tuple([(t if t._ctx is None else Edge(t)) if t.requires_grad else None for t in inputs])
            ctx.needs_input_grad = tuple(needs)
        if isinstance(output, tuple):
            outs = tuple(Tensor._from_op(o, ctx if record else None, i) for i, o in enumerate(output))
            ctx.output_meta = [(o.shape, o.dtype) for o in output]
            return outs
        return Tensor._from_op(output, ctx if record else None, 0)

    def release(self):
        """Drop what backward kept, once the graph is no longer needed."""
        self.__dict__.clear()
        self.inputs = None

    def forward(self, *arrays, **options):
        raise NotImplementedError

    def backward(self, *grad_outputs):
        raise NotImplementedError
