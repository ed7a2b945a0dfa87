"""A worker for the emulated cluster's tests: every dtype's allreduce exact, and where this rank's inbox listens.

On 2 nodes of 2 ranks the large allreduces are hierarchical (in the node, across, in the node); the
line printed at the end names the layout the communicator ran them as.

Inputs are small integers in every dtype, so sums are exact in float16 too and the
reference is plain integer arithmetic. Each rank prints its hostname, local rank and
size, its inbox address and the TCP addresses this process listens on (from
/proc/self/net/tcp, independent of what the communicator reports).
"""

import socket

import numpy as np

import distdl as dl
from distdl.comm.signature import SUPPORTED_DTYPES

SIZES = [1, 1000, 70_000, 70_001]  # above the recursive-doubling limit in every dtype: the ring; uneven parts


def listening():
    """host:port of every TCP socket in LISTEN state in this network namespace."""
    found = []
    with open("/proc/self/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                address, port = local.split(":")
                found.append(f"{socket.inet_ntoa(bytes.fromhex(address)[::-1])}:{int(port, 16)}")
    return found


comm = dl.init()
rank, size = comm.rank, comm.size
for n in SIZES:
    for dtype in SUPPORTED_DTYPES:
        for op in ("sum", "max", "min"):
            def mine(r):
                return ((np.arange(n) * (r + 3)) % 7 - 3).astype(dtype)
            stack = np.stack([mine(r).astype(np.int64) for r in range(size)])
            want = {"sum": stack.sum(0), "max": stack.max(0), "min": stack.min(0)}[op]
            got = comm.allreduce(mine(rank), op)
            assert got.dtype == dtype, (got.dtype, dtype)
            np.testing.assert_array_equal(got.astype(np.int64), want, err_msg=f"allreduce {op} {dtype} n={n}")
print(f"rank {rank} host {socket.gethostname()} local {comm.local_rank}/{comm.local_size} "
      f"inbox {comm.address['tcp']} listening {' '.join(listening())} allreduce exact ({comm.ring_layout})",
      flush=True)
dl.shutdown()
