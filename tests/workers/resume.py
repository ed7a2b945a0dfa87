"""Train 12 steps data-parallel, checkpointing every 2 steps to DISTDL_CHECKPOINT_DIR; resume from the newest.

With --crash-at K, rank 1 raises at step K on the first attempt (DISTDL_RESTART_COUNT 0).
Rank 0 prints the SHA-256 of the final parameters.
"""

import argparse
import hashlib
import os

import numpy as np

import distdl as dl
from distdl import nn, optim
from distdl.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--crash-at", type=int)
args = parser.parse_args()

comm = dl.init()
dl.seed(comm.rank)
rng = np.random.default_rng(0)
dataset = TensorDataset(rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96))
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
ddp = dl.DistributedDataParallel(model)
optimizer = optim.Adam(ddp.parameters(), lr=0.01)
sampler = DistributedSampler(dataset, seed=1)
loader = DataLoader(dataset, batch_size=8, sampler=sampler)
manager = dl.CheckpointManager()
step = 0
state = manager.restore_latest(model=ddp, optimizer=optimizer, sampler=loader)
if state is not None:
    step = state["step"]
    if comm.rank == 0:
        print(f"resumed at step {step}", flush=True)
while step < 12:
    sampler.set_epoch(step // len(loader))
    for x, y in loader:
        if step == args.crash_at and comm.rank == 1 and os.environ["DISTDL_RESTART_COUNT"] == "0":
            raise RuntimeError(f"crash at step {step}")
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(ddp(dl.tensor(x)), y).backward()
        optimizer.step()
        step += 1
        if step % 2 == 0:
            manager.save(step, model=ddp, optimizer=optimizer, sampler=loader)
        if step == 12:
            break
if comm.rank == 0:
    digest = hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest()
    print(f"final digest {digest}", flush=True)
dl.shutdown()
