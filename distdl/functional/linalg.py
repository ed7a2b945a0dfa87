"""Matrix products: matmul with NumPy semantics, and the fused linear layer."""

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._util import binary_operands, check_same_dtype, unbroadcast
from distdl.functional.shape import reshape


class MatMul(Function):
    """Batched matmul of operands with at least two dimensions (1-d ones are reshaped by ``matmul``)."""

    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a @ b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g @ b.swapaxes(-1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(a.swapaxes(-1, -2) @ g, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def matmul(a, b):
    """``a @ b`` as NumPy defines it (1-d operands are vectors; leading axes broadcast)."""
    a, b = binary_operands(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one dimension, got shapes {a.shape} and {b.shape}")
    inner_a = a.shape[-1]
    inner_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if inner_a != inner_b:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not align: the last axis of the first ({inner_a}) "
            f"must equal the {'second-to-last' if b.ndim > 1 else 'only'} axis of the second ({inner_b})"
        )
    if a.ndim == 1 and b.ndim == 1:
        return reshape(MatMul.apply(reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
    if a.ndim == 1:
        out = MatMul.apply(reshape(a, (1, -1)), b)
        return reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        return reshape(MatMul.apply(a, reshape(b, (-1, 1))), a.shape[:-1])
    return MatMul.apply(a, b)


class Linear(Function):
    """Over the last axis of an input of any rank, as one GEMM on its rows (no reshape for a matrix)."""

    def forward(self, x, weight, bias=None):
        x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        self.save_for_backward(x2, weight)
        self.shape = x.shape
        out = x2 @ weight.T
        if bias is not None:
            out += bias
        return out if x.ndim == 2 else out.reshape(x.shape[:-1] + (weight.shape[0],))

    def backward(self, g):
        x2, weight = self.saved
        needs = self.needs_input_grad
        g2 = g if g.ndim == 2 else g.reshape(-1, g.shape[-1])
        gx = None
        if needs[0]:
            gx = g2 @ weight
            if len(self.shape) != 2:
                gx = gx.reshape(self.shape)
        xp = xp_of(g2)
        gw = gb = None
        if needs[1]:  # written where the engine offers (times its scale, on the smaller operand), else a new array
            out, scale = self.target(1, g2.dtype) or (None, None)
            gs, xs = g2, x2
            if scale is not None:
                gs, xs = (g2 * scale, x2) if g2.size <= x2.size else (g2, x2 * scale)
            gw = xp.matmul(gs.T, xs, out=out)
        if len(needs) == 3 and needs[2]:  # the bias's sum over rows as a product with ones: faster than sum(axis=0)
            out, scale = self.target(2, g2.dtype) or (None, None)
            gb = xp.matmul(xp.full(g2.shape[0], 1 if scale is None else scale, g2.dtype), g2, out=out)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` with ``weight`` of shape (out_features, in_features), as torch."""
    if input.ndim < 1 or weight.ndim != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {input.shape} does not fit weight of shape {weight.shape}: "
            f"the input's last axis must equal in_features = weight.shape[1]"
        )
    check_same_dtype("linear", input, weight)
    if bias is None:
        return Linear.apply(input, weight)
    return Linear.apply(input, weight, bias)
