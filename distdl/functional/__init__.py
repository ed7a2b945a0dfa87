"""Differentiable operations on Tensors, named and shaped as torch.nn.functional.

Each op is a ``Function`` with a hand-written backward, or a short composition
of such ops. Where a name is torch's it means what torch means: dimensions are
``dim``/``keepdim`` (NumPy's ``axis``/``keepdims`` are accepted as aliases),
``transpose(x, dim0, dim1)`` swaps two dimensions and ``permute`` reorders all.
"""

from distdl.functional.activation import gelu, leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from distdl.functional.conv import conv2d
from distdl.functional.dropout import dropout
from distdl.functional.elementwise import (
    abs, add, astype, clip, div, exp, log, mul, neg, pow, sqrt, sub, to_device, where,
)
from distdl.functional.embedding import embedding
from distdl.functional.linalg import linear, matmul
from distdl.functional.loss import (
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, l1_loss, mse_loss, nll_loss,
)
from distdl.functional.norm import batch_norm, layer_norm
from distdl.functional.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from distdl.functional.rnn import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell
from distdl.functional.reduce import ValuesIndices, argmax, argmin, max, mean, min, sum, var
from distdl.functional.shape import (
    cat, concatenate, flatten, getitem, permute, reshape, squeeze, stack, transpose, unsqueeze,
)

__all__ = [
    "ValuesIndices", "abs", "adaptive_avg_pool2d", "add", "argmax", "argmin", "astype", "avg_pool2d", "batch_norm", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "cat", "clip", "concatenate", "conv2d", "cross_entropy", "div", "dropout",
    "embedding", "exp", "flatten", "gelu", "getitem", "gru", "gru_cell", "l1_loss", "layer_norm", "leaky_relu", "linear", "log", "log_softmax",
    "lstm", "lstm_cell", "matmul", "max", "max_pool2d", "mean", "min", "mse_loss", "mul", "neg", "nll_loss", "permute", "pow", "relu", "reshape", "rnn", "rnn_cell",
    "sigmoid", "softmax", "sqrt", "squeeze", "stack", "sub", "sum", "tanh", "to_device", "transpose",
    "unsqueeze", "var", "where",
]
