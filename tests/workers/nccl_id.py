"""The NCCL bootstrap's id broadcast over the host communicator, with an injected id maker (no NCCL needed).

Rank 0 makes the id (128 signed bytes from a seeded generator, as the tuple of CuPy before 14 or, with the
argument ``bytes``, as CuPy 14's bytes); any other rank's maker fails if called. Each rank prints the id it got
as signed bytes.
"""

import sys

import numpy as np

import distdl as dl
from distdl.parallel.device_allreduce import nccl_unique_id


FORM = sys.argv[1] if len(sys.argv) > 1 else "tuple"


def made_on_rank_0():
    signed = np.random.default_rng(17).integers(-128, 128, 128)
    return signed.astype(np.int8).tobytes() if FORM == "bytes" else tuple(int(b) for b in signed)


def not_here():
    raise AssertionError("only rank 0 makes the NCCL id")


comm = dl.init()
uid = nccl_unique_id(comm, made_on_rank_0 if comm.rank == 0 else not_here)
if FORM == "bytes":
    assert isinstance(uid, bytes), type(uid)
    uid = tuple(int(b) for b in np.frombuffer(uid, np.int8))
assert isinstance(uid, tuple) and all(isinstance(b, int) for b in uid)
print(f"rank {comm.rank}: id {','.join(map(str, uid))}", flush=True)
dl.shutdown()
