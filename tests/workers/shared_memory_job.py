"""A worker for the shared-memory allreduce: python shared_memory_job.py SCENARIO.

exact     every dtype and op at sizes not divisible by the ranks and of many chunks, against NumPy; every
          rank's result bit-identical; prints how many segment files its directory held once they were mapped
fallback  the same sums where some rank has no shared memory (DISTDL_ZMQ_SHM_DIR set to a missing directory)
die       rank 1 kills itself (SIGKILL) in the middle of a series of shared-memory allreduces
stall     rank 1 sleeps past the timeout before its second shared-memory allreduce
dtypes    float32 and float64 allreduces in turn, many chunks each, every result exact (a slot's regions must
          not move with the dtype while a peer still reads the last call's)
mismatch  after one good allreduce, rank 0 reduces 300000 elements, rank 1 300001 (mismatch_barrier: calls a barrier)
"""

import os
import signal
import sys
import time

import numpy as np

import distdl as dl
from collectives import DTYPES, OPS, input_of, reference, same_everywhere, tolerance

SIZES = [70_001, 100_003, 2 ** 18 + 7]  # above the recursive-doubling limit in every dtype; uneven parts


def exact(comm):
    for n in SIZES:
        for dtype in DTYPES:
            for op in OPS:
                got = comm.allreduce(input_of(comm.rank, n, dtype, op), op)
                want = reference([input_of(r, n, dtype, op) for r in range(comm.size)], op)
                close = tolerance(dtype, comm.size)
                np.testing.assert_allclose(got.astype(np.float64), want, rtol=close, atol=close,
                                           err_msg=f"allreduce {op} {np.dtype(dtype)} n={n}")
                same_everywhere(comm, got, f"allreduce {op} {np.dtype(dtype)} n={n}")


def main(scenario):
    comm = dl.init()
    rank = comm.rank
    big = np.ones(300_000, np.float32)
    if scenario in ("exact", "fallback"):
        comm.allreduce(big)
        print(f"rank {rank}: shared memory {'mapped' if comm._shm else 'not used'}; "
              f"{len(os.listdir(os.environ['DISTDL_ZMQ_SHM_DIR'])) if rank == 0 else 0} files left", flush=True)
        exact(comm)
    elif scenario == "dtypes":
        expected = comm.size * (comm.size + 1) / 2
        for _ in range(100):
            for dtype in (np.float32, np.float64):
                got = comm.allreduce(np.full(30_001, rank + 1, dtype))
                assert (got == expected).all(), (np.dtype(dtype), np.flatnonzero(got != expected)[:5])
    elif scenario == "die":
        for step in range(1000):
            if rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            comm.allreduce(big)
    elif scenario.startswith("mismatch"):
        comm.allreduce(big)
        if rank == 1 and scenario.endswith("barrier"):
            comm.barrier()
        else:
            comm.allreduce(np.ones(300_000 if rank == 0 else 300_001, np.float32))
    elif scenario == "stall":
        comm.allreduce(big)
        if rank == 1:
            time.sleep(5)
        comm.allreduce(big)
    dl.shutdown()
    print(f"rank {rank}: {scenario} ok")


if __name__ == "__main__":
    main(sys.argv[1])
