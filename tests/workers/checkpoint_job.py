"""A job of one that uses checkpoint directory DIR: restores, saves step 1, waits for a line on stdin, saves step 2.

Its weights are MARK, so the test can tell whose checkpoint a file is.
"""

import sys

import distdl as dl
from distdl import nn

directory, mark = sys.argv[1], float(sys.argv[2])
model = nn.Linear(4, 3)
model.weight.data[...] = mark
manager = dl.CheckpointManager(directory)
manager.restore_latest(model=nn.Linear(4, 3))
manager.save(1, model=model)
print("saved 1", flush=True)
sys.stdin.readline()
manager.save(2, model=model)
print("saved 2", flush=True)
