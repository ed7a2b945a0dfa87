"""resume.py, but on the first attempt rank 0 damages the checkpoint of step 6 right after saving it.

Run with --crash-at 7: the restarted job must skip the damaged step 6 and resume from step 4.
"""

import os
import runpy
from pathlib import Path

import distdl as dl
from checkpoint_damage import flip_array_byte

save = dl.CheckpointManager.save


def save_then_damage(self, step, **state):
    path = save(self, step, **state)
    if step == 6 and os.environ["DISTDL_RESTART_COUNT"] == "0":
        if dl.rank() == 0:
            flip_array_byte(path)
        dl.get_comm().barrier()  # damaged before rank 1 goes on to crash
    return path


dl.CheckpointManager.save = save_then_damage
print(f"pid {os.getpid()} rank {os.environ['DISTDL_RANK']}", flush=True)
runpy.run_path(str(Path(__file__).with_name("resume.py")), run_name="__main__")
