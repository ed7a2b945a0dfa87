"""Ranks that disagree on purpose about a call or about ending: python transport_faults.py SCENARIO.

broadcast_roots  every rank broadcasts from a root of its own
gather_roots     every rank gathers to a root of its own
close            rank 1 closes (dl.shutdown) while rank 0 allreduces
exit             rank 1 ends its script without closing while rank 0 allreduces
bad_frame        (ZeroMQ) rank 1, admitted, sends 1 element where rank 0's allreduce expects 10

Each rank prints the DistError it got and how long after the common start it came, then exits 3.
"""

import sys
import time

import numpy as np

import distdl as dl


def main(scenario):
    comm = dl.init()
    rank = comm.rank
    comm.barrier()
    start = time.monotonic()
    try:
        if scenario == "broadcast_roots":
            comm.broadcast(np.zeros(5), root=rank)
        elif scenario == "gather_roots":
            comm.gather(np.zeros(5), root=rank)
        elif rank == 0:
            comm.allreduce(np.ones(10))
        elif scenario == "close":
            dl.shutdown()
        elif scenario == "bad_frame":
            call = comm._call("allreduce", "sum", np.ones(10))
            comm._send(0, call, 2, np.ones(1))  # the tag of the first exchange of recursive doubling
            time.sleep(2)
            return
        else:
            return  # the interpreter's exit closes the communicator
    except dl.DistError as exc:
        print(f"rank {rank} after {time.monotonic() - start:.3f} s: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
    print(f"rank {rank}: no error", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
