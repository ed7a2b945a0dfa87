"""Dropout and Embedding: layers whose forward depends on the mode or on integer input."""

from distdl import functional as F
from distdl.nn import init
from distdl.nn.linear import empty_parameter
from distdl.nn.module import Module


class Dropout(Module):
    """Zero a fraction ``p`` in training (scaling the rest by 1/(1-p)); the identity in evaluation."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: probability p must be in [0, 1], got {p}")
        self.p, self.inplace = p, inplace  # inplace: torch's signature; computed out of place, same result

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Embedding(Module):
    """A (num_embeddings, embedding_dim) table looked up by integer indices; N(0, 1) rows, as torch."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = init.normal_(empty_parameter(num_embeddings, embedding_dim))
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}"
