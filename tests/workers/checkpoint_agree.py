"""Each rank restores from its own directory DIR/rank-R, where the test damaged different files; print the step.

The ranks must agree on one checkpoint: the newest that every rank reads whole.
"""

import os
import sys

import distdl as dl
from distdl import nn

comm = dl.init()
model = nn.Linear(2, 2)
with dl.CheckpointManager(os.path.join(sys.argv[1], f"rank-{comm.rank}")) as manager:
    state = manager.restore_latest(model=model)
print(f"rank {comm.rank} restored step {state['step']} weight {float(model.weight.data[0, 0])}", flush=True)
dl.shutdown()
