"""Embedding: a table of vectors looked up by integer indices."""

from distdl import functional as F
from distdl.nn import init
from distdl.nn.init import empty_parameter
from distdl.nn.module import Module


class Embedding(Module):
    """A (num_embeddings, embedding_dim) table looked up by integer indices; N(0, 1) rows, as torch."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = init.normal_(empty_parameter(num_embeddings, embedding_dim))
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0
        self._factory(device, dtype)

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}"
