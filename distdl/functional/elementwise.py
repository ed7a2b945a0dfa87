"""Elementwise arithmetic and math, with broadcasting undone in backward."""

import numbers

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import device_of, to_device as _to_device, xp_of
from distdl.functional._util import binary_operands, unbroadcast


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        gb = -unbroadcast(g, self.shapes[1]) if self.needs_input_grad[1] else None
        return unbroadcast(g, self.shapes[0]), gb


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g / b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    """``a ** exponent`` for a constant exponent (a tensor exponent goes through exp and log)."""

    def forward(self, a, exponent):
        self.save_for_backward(a)
        self.exponent = exponent
        return a**exponent

    def backward(self, g):
        (a,) = self.saved
        p = self.exponent
        if p == 2:
            return g * (a + a)
        return g * (p * a ** (p - 1))


class Exp(Function):
    def forward(self, a):
        out = xp_of(a).exp(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        return g * self.saved[0]


class Log(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return xp_of(a).log(a)

    def backward(self, g):
        return g / self.saved[0]


class Sqrt(Function):
    def forward(self, a):
        out = xp_of(a).sqrt(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        return g / (2 * self.saved[0])


class Abs(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return xp_of(a).abs(a)

    def backward(self, g):
        return g * xp_of(g).sign(self.saved[0])


class Clip(Function):
    """Gradient passes where ``low <= a <= high`` (as torch.clamp)."""

    def forward(self, a, low, high):
        xp = xp_of(a)
        self.inside = xp.ones(a.shape, dtype=bool)
        if low is not None:
            self.inside &= a >= low
        if high is not None:
            self.inside &= a <= high
        return xp.clip(a, low, high)

    def backward(self, g):
        return g * self.inside


class Where(Function):
    def forward(self, a, b, condition):
        self.condition = condition
        self.shapes = a.shape, b.shape
        return xp_of(a).where(condition, a, b)

    def backward(self, g):
        xp = xp_of(g)
        zero = g.dtype.type(0)
        ga = unbroadcast(xp.where(self.condition, g, zero), self.shapes[0]) if self.needs_input_grad[0] else None
        gb = unbroadcast(xp.where(self.condition, zero, g), self.shapes[1]) if self.needs_input_grad[1] else None
        return ga, gb


class AsType(Function):
    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return g.astype(self.dtype)


class ToDevice(Function):
    def forward(self, a, device):
        self.source = device_of(a)
        return _to_device(a, device)

    def backward(self, g):
        return _to_device(g, self.source)


def add(a, b):
    return Add.apply(*binary_operands(a, b, "add"))


def sub(a, b):
    return Sub.apply(*binary_operands(a, b, "sub"))


def mul(a, b):
    return Mul.apply(*binary_operands(a, b, "mul"))


def div(a, b):
    return Div.apply(*binary_operands(a, b, "div"))


def neg(a):
    return Neg.apply(a)


def pow(a, exponent):
    """``a ** exponent``; a tensor exponent (or a tensor power of a number) uses exp(b log a)."""
    if isinstance(a, Tensor) and isinstance(exponent, numbers.Number):
        return Pow.apply(a, exponent=exponent)
    a, exponent = binary_operands(a, exponent, "pow")
    return exp(mul(exponent, log(a)))


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def abs(a):
    return Abs.apply(a)


def clip(a, min=None, max=None):
    """Clamp to [min, max]; either bound may be None."""
    return Clip.apply(a, low=min, high=max)


def where(condition, a, b):
    """Elementwise ``a`` where ``condition`` holds, else ``b``; the condition gets no gradient."""
    a, b = binary_operands(a, b, "where")
    condition = condition.data if isinstance(condition, Tensor) else condition
    return Where.apply(a, b, condition=xp_of(a.data).asarray(condition, dtype=bool))


def astype(a, dtype):
    return AsType.apply(a, dtype=dtype)


def to_device(a, device):
    return ToDevice.apply(a, device=device)


__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "abs", "clip", "where", "astype",
           "to_device"]
