"""restore_latest() in each DIR given, into a Linear(2000, 2000); print what it restored, logged and allocated.

Prints one JSON line per directory: the step restored (or null), the warnings of logger
"distdl.checkpoint", the seconds it took, the peak bytes allocated through tracemalloc
(NumPy's arrays included) and the growth of the peak resident set (VmHWM, reset first).
"""

import json
import logging
import sys
import time
import tracemalloc

import distdl as dl
from distdl import nn


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


model = nn.Linear(2000, 2000)
for directory in sys.argv[1:]:
    collect = Collect()
    logging.getLogger("distdl.checkpoint").addHandler(collect)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = status("VmRSS")
    tracemalloc.start()
    start = time.monotonic()
    with dl.CheckpointManager(directory) as manager:
        state = manager.restore_latest(model=model)
    seconds = time.monotonic() - start
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"step": None if state is None else state["step"], "warnings": collect.messages,
                      "seconds": seconds, "allocated": allocated, "rss_growth": status("VmHWM") - before}),
          flush=True)
    logging.getLogger("distdl.checkpoint").removeHandler(collect)
