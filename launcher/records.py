"""The records an attempt's workers and keepers leave in DISTDL_ERROR_DIR, read bounded, and what they say.

Written by the worker (distdl/_errorfile.py): ``start-<r>-<pid>``, ``done-<r>-<pid>``
(a normal interpreter exit), ``error-<r>-<pid>`` (an uncaught exception). Written by
the worker's keeper (launcher/keeper.py): ``exit-<r>-<pid>`` (how and when it ended).
"""

import json
import os
import re
import stat
from dataclasses import dataclass, field

MAX_RECORD_BYTES = 1 << 20  # a traceback fits many times over
NAME = re.compile(r"^(start|done|error|exit)-(\d+)-(\d+)\.json$")


@dataclass
class Records:
    starts: dict = field(default_factory=dict)  # pid -> record
    done: set = field(default_factory=set)  # pids that completed normally
    errors: list = field(default_factory=list)  # uncaught exceptions, earliest first
    exits: list = field(default_factory=list)  # workers that ended, earliest first

    def completed(self, pid):
        """Whether the worker ``pid`` ended normally: it wrote its completion record, or never promised one."""
        return pid in self.done or pid not in self.starts

    def exit_of(self, rank):
        return next((e for e in self.exits if e["rank"] == rank), None)

    def error_of(self, rank):
        return next((e for e in self.errors if e["rank"] == rank), None)


def _load(path):
    """One record, or None when it is not a small regular file of a JSON object with an int rank and pid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            record = json.loads(f.read(MAX_RECORD_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict) or not all(isinstance(record.get(k), int) for k in ("rank", "pid")):
        return None
    if not isinstance(record.get("time", 0), (int, float)):
        record["time"] = 0
    return record


def read(directory):
    records = Records()
    try:
        names = os.listdir(directory)
    except OSError:
        return records
    for name in names:
        match = NAME.match(name)
        record = _load(os.path.join(directory, name)) if match else None
        if record is None:
            continue
        kind = match.group(1)
        if kind == "start":
            records.starts[record["pid"]] = record
        elif kind == "done":
            records.done.add(record["pid"])
        elif kind == "error":
            records.errors.append(record)
        elif isinstance(record.get("code"), int):
            records.exits.append(record)
    records.errors.sort(key=lambda r: r.get("time", 0))
    records.exits.sort(key=lambda r: r.get("time", 0))
    return records
