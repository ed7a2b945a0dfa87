"""Activation layers over the fused functional activations."""

from distdl import functional as F
from distdl.functional._util import numpy_alias
from distdl.nn.module import Module


class ReLU(Module):
    """``inplace`` is accepted for torch's signature; the result is the same, computed out of place."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.relu(input)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope, self.inplace = negative_slope, inplace

    def forward(self, input):
        return F.leaky_relu(input, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, input):
        return F.sigmoid(input)


class Tanh(Module):
    def forward(self, input):
        return F.tanh(input)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    """Softmax along ``dim`` (NumPy's ``axis`` is accepted too); torch's implicit ``dim=None`` means -1 here."""

    def __init__(self, dim=-1, *, axis=None):
        super().__init__()
        self.dim = numpy_alias(type(self).__name__, "dim", dim, -1, "axis", axis)

    def forward(self, input):
        return F.softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, input):
        return F.log_softmax(input, self.dim)
