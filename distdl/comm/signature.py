"""The call signature and wire codes both transports share: what ranks compare to agree they make the same call.

A signature is a tuple of small integers (seq, collective, op, dtype, count, root);
-1 stands for "none" (no op for a broadcast, no root for an allreduce). MPI
exchanges it in one small allgather before a collective; ZeroMQ carries it in the
header of every message, with the sender and a step tag.
"""

import struct

import numpy as np

from distdl.comm.errors import CollectiveMismatchError

REDUCE_OPS = ("sum", "mean", "max", "min", "prod")
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64))
WIRE_DTYPES = SUPPORTED_DTYPES + (np.dtype(np.uint8),)  # uint8: JSON bytes, moved only by the communicator itself
COLLECTIVES = ("allreduce", "broadcast", "allgather", "gather", "reduce_scatter", "barrier", "json")
OP_CODES = {op: i for i, op in enumerate(REDUCE_OPS)}
DTYPE_CODES = {dtype: i for i, dtype in enumerate(WIRE_DTYPES)}
COLLECTIVE_CODES = {name: i for i, name in enumerate(COLLECTIVES)}
NONE = -1

# A ZeroMQ message header: seq, sender, collective, op, dtype, count, root, tag.
HEADER = struct.Struct("<qibbbxqiI")


def signature(seq, collective, op=None, array=None, root=NONE):
    """The signature of call number ``seq``: ``collective`` on ``array`` (None for a barrier)."""
    return (seq, COLLECTIVE_CODES[collective], NONE if op is None else OP_CODES[op],
            NONE if array is None else DTYPE_CODES[array.dtype], NONE if array is None else array.size, root)


def pack_header(sig, sender, tag):
    seq, collective, op, dtype, count, root = sig
    return HEADER.pack(seq, sender, collective, op, dtype, count, root, tag)


def unpack_header(data):
    """(signature, sender, tag) of a header packed by ``pack_header``."""
    seq, sender, collective, op, dtype, count, root, tag = HEADER.unpack(data)
    return (seq, collective, op, dtype, count, root), sender, tag


def describe(collective, op=None, dtype=None, count=None, seq=None):
    """'allreduce #12 (sum, float32, 1000 elements)': how errors name a call."""
    details = [str(x) for x in (op, dtype) if x is not None]
    if count is not None:
        details.append(f"{count} elements")
    numbered = collective if seq is None else f"{collective} #{seq}"
    return f"{numbered} ({', '.join(details)})" if details else numbered


def describe_signature(sig):
    """A signature in words, as ``describe`` writes a call; codes out of range are shown as numbers."""
    seq, collective, op, dtype, count, root = (int(v) for v in sig)

    def name(table, code, what):
        return table[code] if 0 <= code < len(table) else (None if code == NONE else f"{what} code {code}")

    text = describe(name(COLLECTIVES, collective, "collective") or "no collective", name(REDUCE_OPS, op, "op"),
                    name(WIRE_DTYPES, dtype, "dtype"), count if count >= 0 else None, seq)
    return text + (f" root {root}" if root >= 0 else "")


def check_agreed(rank, everyone, mine):
    """Raise CollectiveMismatchError naming every rank's call unless every row of ``everyone`` is ``mine``."""
    if everyone.tobytes() != mine.tobytes() * len(everyone):  # the bytes: each collective pays this
        calls = "; ".join(f"rank {r}: {describe_signature(row)}" for r, row in enumerate(everyone))
        raise CollectiveMismatchError(
            f"rank {rank}: ranks made different collective calls ({calls}); every rank must call the same "
            "collectives in the same order with the same op, dtype, size and root")
