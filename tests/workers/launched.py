"""A worker for the launcher's tests: python launched.py SCENARIO.

raise   rank 1 raises an exception after init; the others wait in a collective
kill    rank 1 kills itself with SIGKILL; the others sleep (they never finish alone)
sleep   every rank sleeps until it is stopped
ok      every rank reduces an array and prints its rank and world size
linger  as ok, after 8 s of sleep (a job that is still running while a test does something to it); rank 0 also
        prints the run token it was given
raise_and_linger  as raise, but rank 1's process lingers 2 s after it has told its peers it leaves, so rank 0
        dies of the lost peer and ends first, although rank 1 raised first
"""

import atexit
import os
import signal
import sys
import time

import numpy as np

import distdl as dl

scenario = sys.argv[1]
if scenario == "raise_and_linger" and os.environ.get("RANK") == "1":
    atexit.register(time.sleep, 2)  # registered before dl.init(), so it runs after distdl has abandoned its peers
comm = dl.init()
print(f"pid {os.getpid()} rank {comm.rank} of {comm.size} restart {os.environ.get('DISTDL_RESTART_COUNT')}", flush=True)
if scenario == "linger":
    time.sleep(8)
    if comm.rank == 0:
        print(f"run token {os.environ['DISTDL_RUN_ID']}", flush=True)
if scenario in ("ok", "linger"):
    x = np.ones(3)
    comm.allreduce(x)
    print(f"rank {comm.rank} sum {x[0]:g} backend {comm.backend}")
    dl.shutdown()
    sys.exit(0)
comm.barrier()
if scenario in ("raise", "raise_and_linger") and comm.rank == 1:
    raise ValueError("boom from rank 1")
if scenario == "kill" and comm.rank == 1:
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
if scenario in ("raise", "raise_and_linger"):
    comm.allreduce(np.ones(3))  # waits for rank 1, which never comes
time.sleep(600)
