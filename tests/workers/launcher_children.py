"""A worker that leaves processes behind: python launcher_children.py SCENARIO.

Every rank starts a plain child and a setsid child (both hold the worker's stdout
and sleep for 600 s) and prints its own, its parent's (the keeper's) and their PIDs
as ``job pids P1 P2 ...``; then:

succeed  every rank reduces an array and ends normally (the children still run); first each runs a helper
         process that imports distdl and ends by os._exit(0): that is not the rank ending early
raise    rank 1 raises; the others wait in a collective
kill     rank 1 kills itself with SIGKILL; the others wait in a collective
exit0    rank 1 calls os._exit(0) in the middle of a loop of allreduces
hang     every rank sleeps (until the launcher, or its death, stops it)
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np

import distdl as dl

scenario = sys.argv[1]
comm = dl.init()
plain = subprocess.Popen(["sleep", "600"])
detached = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(f"rank {comm.rank} job pids {os.getpid()} {os.getppid()} {plain.pid} {detached.pid}", flush=True)
comm.barrier()
if scenario == "succeed":
    subprocess.run([sys.executable, "-c", "import os, distdl; os._exit(0)"], check=True)
    x = np.ones(3)
    comm.allreduce(x)
    print(f"rank {comm.rank} sum {x[0]:g}", flush=True)
    dl.shutdown()
    sys.exit(0)
if scenario == "exit0":
    for step in range(100_000):
        if comm.rank == 1 and step == 5:
            os._exit(0)
        comm.allreduce(np.ones(10))
if comm.rank == 1 and scenario == "raise":
    raise ValueError("boom from rank 1")
if comm.rank == 1 and scenario == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if scenario in ("raise", "kill"):
    comm.allreduce(np.ones(3))  # waits for rank 1, which never comes
time.sleep(600)
