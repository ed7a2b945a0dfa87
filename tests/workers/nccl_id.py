"""The NCCL bootstrap's id broadcast over the host communicator, with an injected id maker (no NCCL needed).

Rank 0 makes the id (128 signed bytes from a seeded generator); any other rank's maker fails if called.
Each rank prints the id it got.
"""

import numpy as np

import distdl as dl
from distdl.parallel.device_allreduce import nccl_unique_id


def made_on_rank_0():
    return tuple(int(b) for b in np.random.default_rng(17).integers(-128, 128, 128))


def not_here():
    raise AssertionError("only rank 0 makes the NCCL id")


comm = dl.init()
uid = nccl_unique_id(comm, made_on_rank_0 if comm.rank == 0 else not_here)
assert isinstance(uid, tuple) and all(isinstance(b, int) for b in uid)
print(f"rank {comm.rank}: id {','.join(map(str, uid))}", flush=True)
dl.shutdown()
