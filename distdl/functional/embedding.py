"""Embedding lookup: rows of a weight matrix picked by integer indices."""

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import scatter_add, xp_of
from distdl.value_checks import check, readable


class Embedding(Function):
    def forward(self, weight, indices, padding_idx):
        self.indices, self.shape, self.padding_idx = indices, weight.shape, padding_idx
        return weight[indices]

    def backward(self, g):
        grad = xp_of(g).zeros(self.shape, g.dtype)
        scatter_add(grad, self.indices.ravel(), g.reshape(-1, self.shape[1]))  # an index may repeat
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        return grad


def embedding(input, weight, padding_idx=None):
    """Look up rows of ``weight`` (num_embeddings, dim) for integer ``input`` of any shape.

    The row at ``padding_idx`` gets no gradient, as in torch.nn.functional.embedding.
    """
    indices = input.data if isinstance(input, Tensor) else xp_of(weight.data).asarray(input)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {indices.dtype}")
    rows = weight.shape[0]
    if indices.size:  # read at once on the host, once per step on a device (value_checks)
        check(xp_of(indices).stack([indices.min(), indices.max()]), lambda v: v[0] < 0 or v[1] >= rows,
              lambda v: f"embedding: indices must lie in [0, {rows}) for a table of {rows} rows, "
                        f"got values from {v[0]} to {v[1]}", IndexError)
        if not readable(indices):  # until the step's check raises, a bad index wraps around, as CuPy's indexing
            indices = indices % rows
    if padding_idx is not None and padding_idx < 0:
        padding_idx += rows
    return Embedding.apply(weight, indices=indices, padding_idx=padding_idx)
