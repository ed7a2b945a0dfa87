"""A worker that goes wrong on purpose: python faults.py SCENARIO.

plain     every rank joins and runs one allreduce
mismatch  rank 0 reduces 10 elements, the others 11
die       rank 1 kills itself (SIGKILL) in the middle of a series of allreduces
stall     rank 1 sleeps for 5 s (longer than the test's timeout) before calling the collective
overlap   an iallreduce completes in the background while the caller computes
"""

import os
import signal
import sys
import time

import numpy as np

import distdl as dl


def main(scenario):
    comm = dl.init()
    rank = comm.rank
    if scenario == "plain":
        assert comm.allreduce(np.ones(3)).tolist() == [comm.size] * 3
    elif scenario == "mismatch":
        comm.allreduce(np.ones(10 if rank == 0 else 11, np.float32))
    elif scenario == "die":
        for step in range(1000):
            if rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            comm.allreduce(np.ones(200_000, np.float32))
    elif scenario == "stall":
        if rank == 1:
            time.sleep(5)
        comm.allreduce(np.ones(10))
    elif scenario == "overlap":
        big = np.full(4_000_000, rank + 1, np.float32)
        request = comm.iallreduce(big)
        a = np.random.default_rng(0).random((200, 200))
        deadline = time.monotonic() + 30
        while not request.done() and time.monotonic() < deadline:
            a = np.tanh(a @ a)  # the caller computes; the collective goes on in the background
        assert request.done(), "iallreduce made no progress while the caller computed"
        request.wait()
        assert np.all(big == comm.size * (comm.size + 1) / 2)
    dl.shutdown()
    print(f"rank {rank}: {scenario} ok")


if __name__ == "__main__":
    main(sys.argv[1])
