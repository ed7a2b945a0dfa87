"""The device buckets' path is agreed at construction: rank 1 forces 'staging' where rank 0 leaves 'auto'.

Both ranks must raise the same ValueError naming both ranks' choices (not pair different collectives);
each prints the message.
"""

import distdl as dl
from distdl import device
from distdl.parallel.device_allreduce import select

comm = dl.init()
try:
    select(comm, device.get("sim"), "staging" if comm.rank == 1 else None)
except ValueError as exc:
    print(f"rank {comm.rank}: {exc}", flush=True)
else:
    raise AssertionError("different paths were not refused")
dl.shutdown()
