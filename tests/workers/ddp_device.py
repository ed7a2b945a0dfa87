"""DDP scenarios of ddp.py on the simulated asynchronous device: python ddp_device.py SCENARIO [options].

Run with DISTDL_DEVICE=sim: the buckets then go through the device allreduce (staging, in chunks of
DISTDL_STAGING_CHUNK_BYTES), whose copies take effect only when their events are waited on. Each rank
first says which path its DDP took. With ``--no-compute-wait`` the compute stream does not wait on the
allreduce's events before the optimizer: the scenario must then fail (the simulated device reads stale data).
"""

import sys

import ddp as scenarios
import numpy as np

import distdl as dl
from distdl.parallel import ddp as ddp_module


def main():
    args = sys.argv[1:]
    broken = "--no-compute-wait" in args
    args = [a for a in args if a != "--no-compute-wait"]
    if "--mark" in args:  # a token on the command line, by which the test finds leftover processes
        args = args[:args.index("--mark")]
    if broken:
        ddp_module.DistributedDataParallel._compute_waits_for = lambda self, bucket: None
    comm = dl.init()
    probe = dl.DistributedDataParallel(dl.nn.Linear(2, 2).to(np.float64))
    print(f"rank {comm.rank}: {repr(probe).splitlines()[0]}", flush=True)
    scenario = {"equivalence": scenarios.equivalence, "syncbn": scenarios.syncbn, "unused": scenarios.unused,
                "fp16": scenarios.fp16, "nonfinite": scenarios.nonfinite, "uneven": scenarios.uneven}[args[0]]
    scenario(comm, *args[1:])
    dl.shutdown()
    print(f"rank {comm.rank}: device {' '.join(args)} ok", flush=True)


if __name__ == "__main__":
    main()
