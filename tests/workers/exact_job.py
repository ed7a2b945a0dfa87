"""A ZeroMQ job that checks every collective exactly until told to stop: python exact_job.py DIR [MAX_MIB].

The job a stranger attacks, or one paused under load. Each rank writes where it
listens to DIR/rank-R.json, then allreduces integer arrays of several sizes (both
algorithms, 0 B up to MAX_MIB MiB) and broadcasts, each result compared with the
exact one every rank can compute, until DIR/stop appears (rank 0 sees it, every
rank learns it from the same allreduce). It samples its resident memory and prints
how much it grew after the first round.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

import distdl as dl

SIZES = [1, 1000, 40_000, 1_500_000]  # elements; the last two go round the ring (several segments)


def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(directory, max_mib=None):
    comm = dl.init()
    rank, size = comm.rank, comm.size
    sizes = SIZES if max_mib is None else [0, 1, 1000, 100_000, 1 << 20, max_mib << 17]  # int64: 2**17 a MiB
    written = Path(directory, f"rank-{rank}.json.partial")  # renamed when whole: a reader never sees half of it
    written.write_text(json.dumps({"tcp": comm.address["tcp"], "ipc": comm.address["ipc"], "pid": os.getpid()}))
    written.rename(written.with_suffix(""))
    stop, step, baseline, peak = Path(directory, "stop"), 0, None, 0.0
    while True:
        n = sizes[step % len(sizes)]
        base = np.arange(n, dtype=np.int64) % 1009
        got = comm.allreduce(base * (rank + 1) + step)
        assert np.array_equal(got, base * (size * (size + 1) // 2) + step * size), f"allreduce {step} of {n} wrong"
        shared = comm.broadcast(np.full(7, step if rank == step % size else -1, np.int64), root=step % size)
        assert np.array_equal(shared, np.full(7, step)), f"broadcast {step} wrong"
        step += 1
        if step == len(sizes):
            baseline = rss_mb()
        peak = max(peak, rss_mb())
        if comm.allreduce(np.array([rank == 0 and stop.exists()], np.int64), "max")[0]:
            break
    dl.shutdown()
    print(f"rank {rank}: {step} exact rounds, rss growth {peak - baseline:.1f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
