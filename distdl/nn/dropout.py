"""Dropout: zero random elements in training, the identity in evaluation."""

from distdl import functional as F
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
