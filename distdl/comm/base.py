"""The one interface every backend implements: collectives on contiguous arrays.

Collectives work in place on the caller's array where the result has its shape
(allreduce, broadcast) and return new arrays otherwise (allgather, gather,
reduce_scatter). Metadata travels as JSON, never as pickles.
"""

import numpy as np

REDUCE_OPS = ("sum", "mean", "max", "min", "prod")
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64))


class Communicator:
    """A fixed group of ``size`` processes; this one is ``rank``."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    backend = None

    def allreduce(self, array, op="sum"):
        raise NotImplementedError

    def iallreduce(self, array, op="sum"):
        raise NotImplementedError

    def broadcast(self, array, root=0):
        raise NotImplementedError

    def allgather(self, array):
        raise NotImplementedError

    def gather(self, array, root=0):
        raise NotImplementedError

    def reduce_scatter(self, array, op="sum"):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def broadcast_json(self, value, root=0):
        raise NotImplementedError

    def allgather_json(self, value):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


def check_array(array, collective):
    """Reject what no backend can move: a non-array, a dtype off the list, a non-contiguous view."""
    if not hasattr(array, "dtype") or not hasattr(array, "shape"):
        raise TypeError(f"{collective} takes an array, got {type(array).__name__}")
    if array.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise TypeError(f"{collective} does not support dtype {array.dtype}: use one of {names}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{collective} needs a C-contiguous array; pass np.ascontiguousarray(array)")


def check_op(op, collective):
    if op not in REDUCE_OPS:
        raise ValueError(f"{collective}: unknown op {op!r}, expected one of {', '.join(REDUCE_OPS)}")


def check_root(root, size, collective):
    if not 0 <= root < size:
        raise ValueError(f"{collective}: root {root} is not a rank of this world of {size}")
