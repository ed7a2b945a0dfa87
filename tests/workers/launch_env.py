"""A worker for the launch-convention tests: python launch_env.py SCENARIO.

env       every rank joins, reduces an array and prints what it was told: its torchrun variables, its BLAS threads
progress  as env, and rank 0 (and 1) draw a 5-step tqdm bar where distdl-run says the console is live
trainer   as env, then two epochs of the Trainer on the embedded digits
"""

import logging
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info

import distdl as dl

scenario = sys.argv[1]
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # what dl.init() says at info
comm = dl.init()
x = np.ones(3)
comm.allreduce(x)
torch = " ".join(f"{name}={os.environ.get(name)}" for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                                "MASTER_ADDR", "MASTER_PORT"))
threads = sorted({pool["num_threads"] for pool in threadpool_info()})
sys.stdout.write(f"rank {comm.rank} of {comm.size} sum {x[0]:g} backend {comm.backend} local {comm.local_rank} "
                 f"of {comm.local_size} threads {threads} {torch}\n")  # one write: whole among other ranks' lines
sys.stdout.flush()
if scenario == "progress":
    from tqdm import tqdm

    live = os.environ.get("DISTDL_LIVE_OUTPUT") == "1"
    for _ in tqdm(range(5), desc=f"rank{comm.rank}-bar", disable=not live, mininterval=0, ncols=60):
        comm.barrier()
        time.sleep(0.3)  # slower than distdl-run's look at mpiexec's output files (50 ms): every redraw is seen
    print(f"rank {comm.rank} done", flush=True)
if scenario == "trainer":
    from distdl import nn, optim
    from distdl.data import TensorDataset, load_digits

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    trainer = dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss())
    trainer.fit(TensorDataset(*load_digits()), epochs=2, batch_size=16)
dl.shutdown()
