"""Save one ~20 MB checkpoint of step STEP (every weight equal to STEP) into DIR, keeping 2; say when it starts.

The test kills it at a random moment of the save.
"""

import sys

import distdl as dl
from distdl import nn

directory, step = sys.argv[1], int(sys.argv[2])
model = nn.Linear(2500, 2000)
model.weight.data[...] = step
manager = dl.CheckpointManager(directory, keep=2)
print("saving", flush=True)
manager.save(step, model=model)
print("saved", flush=True)
