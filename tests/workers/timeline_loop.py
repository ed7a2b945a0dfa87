"""A plain DDP training loop (no Trainer) whose phases have known lengths; each rank writes what it measured.

Every forward sleeps FORWARD_SLEEP inside the model and rank 1 sleeps DATA_SLEEP before each batch
(its "data"), so rank 0 waits about that long for rank 1's gradients at the end of each backward.
Writes OUT/rank-<r>.json: ddp.timings(), the loop's wall time from its first forward, the steps and the
bucket count; rank 0 also writes ddp.timings(all_ranks=True). Run with DISTDL_TIMELINE for the trace; END is
"shutdown" (dl.shutdown() writes it) or "exit" (the end of the script does).
"""

import json
import sys
import time

import numpy as np

import distdl as dl
from distdl import nn, optim

STEPS = 12
FORWARD_SLEEP = 0.004
DATA_SLEEP = 0.03


class SlowLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(16, 64), nn.Linear(64, 4)

    def forward(self, x):
        time.sleep(FORWARD_SLEEP)
        return self.second(self.first(x).relu())


def main(out, end):
    dl.init()
    dl.seed(0)
    model = SlowLinear()
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets: several allreduces a step
    opt = optim.SGD(ddp.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(dl.rank())
    for step in range(STEPS):
        if dl.rank() == 1:
            time.sleep(DATA_SLEEP)
        x, y = rng.standard_normal((8, 16)).astype(np.float32), rng.integers(0, 4, 8)
        if step == 0:
            start = time.time()  # from the first forward: the first step has no data wait to account
        loss = loss_fn(ddp(dl.tensor(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    wall = time.time() - start
    mine = {"timings": ddp.timings(), "wall": wall, "steps": STEPS, "buckets": len(ddp.buckets)}
    everyone = ddp.timings(all_ranks=True)
    if dl.rank() == 0:
        mine["all_ranks"] = everyone
    with open(f"{out}/rank-{dl.rank()}.json", "w") as f:
        json.dump(mine, f)
    if end == "shutdown":
        dl.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
