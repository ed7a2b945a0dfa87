"""Activations and softmax, each fused with a hand-written backward."""

import math

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._special import erfc
from distdl.functional._util import normalize_dim, numpy_alias


class ReLU(Function):
    def forward(self, x):
        out = xp_of(x).maximum(x, 0)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        return g * (self.saved[0] > 0).astype(g.dtype)  # a float mask multiplies fastest


def stable_sigmoid(x):
    """1/(1+e^-x) for x >= 0 and e^x/(1+e^x) below, with e = exp(-|x|): never overflows, exact in the tails.

    The two branches are blended with a float mask, which is faster than selecting by it.
    """
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    positive = (x >= 0).astype(x.dtype)
    return (e + positive * (1 - e)) / (1 + e)


class LeakyReLU(Function):
    def forward(self, x, slope):
        # slope + (1 - slope) * [x > 0]: a float factor, since selecting by a random mask is slow
        self.factor = (x > 0).astype(x.dtype)
        self.factor *= 1 - slope
        self.factor += slope
        return x * self.factor

    def backward(self, g):
        return g * self.factor


class Sigmoid(Function):
    def forward(self, x):
        out = stable_sigmoid(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        out = self.saved[0]
        return g * out * (1 - out)


class Tanh(Function):
    def forward(self, x):
        out = xp_of(x).tanh(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        out = self.saved[0]
        return g * (1 - out * out)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GELU(Function):
    """x * Phi(x), exactly (erf) or with the tanh approximation, as torch.nn.functional.gelu."""

    def forward(self, x, approximate):
        xp = xp_of(x)
        self.approximate = approximate
        self.save_for_backward(x)
        if approximate == "tanh":
            self.t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * erfc(x * x.dtype.type(-1 / math.sqrt(2)))
        return x * self.cdf

    def backward(self, g):
        (x,) = self.saved
        xp = xp_of(x)
        if self.approximate == "tanh":
            t = self.t
            dinner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)
        pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
        return g * (self.cdf + x * pdf)


class Softmax(Function):
    def forward(self, x, axis):
        xp = xp_of(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        self.axis = axis
        self.save_for_backward(out)
        return out

    def backward(self, g):
        out = self.saved[0]
        return out * (g - (g * out).sum(axis=self.axis, keepdims=True))


def _log_softmax(x, axis):
    xp = xp_of(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, x, axis):
        out = _log_softmax(x, axis)
        self.axis = axis
        self.save_for_backward(out)
        return out

    def backward(self, g):
        out = self.saved[0]
        return g - xp_of(g).exp(out) * g.sum(axis=self.axis, keepdims=True)


# ``inplace`` is accepted for torch's signatures: the result is the same, computed out of place.
def relu(input, inplace=False):
    return ReLU.apply(input)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return LeakyReLU.apply(input, slope=negative_slope)


def sigmoid(input):
    return Sigmoid.apply(input)


def tanh(input):
    return Tanh.apply(input)


def gelu(input, approximate="none"):
    """Gaussian error linear unit; ``approximate`` is 'none' (exact, erf) or 'tanh'."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(input, approximate=approximate)


def _softmax_dim(name, x, dim, axis):
    dim = numpy_alias(name, "dim", dim, -1, "axis", axis)
    if dim is None:
        raise TypeError(f"{name}: dim=None (torch's deprecated implicit choice by the input's rank) is not "
                        f"supported; give the dimension, e.g. dim=1 for the classes of (N, C) scores")
    return normalize_dim(dim, x.ndim)


def softmax(input, dim=-1, *, axis=None):
    """exp(x) / sum(exp(x)) along ``dim`` (NumPy's ``axis``), by default the last."""
    return Softmax.apply(input, axis=_softmax_dim("softmax", input, dim, axis))


def log_softmax(input, dim=-1, *, axis=None):
    return LogSoftmax.apply(input, axis=_softmax_dim("log_softmax", input, dim, axis))
