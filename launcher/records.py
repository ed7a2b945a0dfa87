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

    def exit_of_process(self, pid):
        return next((e for e in self.exits if e["pid"] == pid), None)

    def error_of(self, rank, pid=None):
        """The earliest error of ``rank``: of its worker process ``pid`` where known (not of a child of it)."""
        return next((e for e in self.errors if e["rank"] == rank and pid in (None, e["pid"])), None)


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
    if not isinstance(record.get("time"), (int, float)):
        record["time"] = 0
    return record


class Reader:
    """Reads a directory of records again and again, parsing each file once (every record is written once, whole)."""

    def __init__(self, directory):
        self.directory = directory
        self._parsed = {}  # file name -> (kind, record)

    def read(self):
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        for name in names:
            match = NAME.match(name)
            if match and name not in self._parsed:
                record = _load(os.path.join(self.directory, name))
                if record is not None:
                    self._parsed[name] = (match.group(1), record)
        records = Records()
        for kind, record in self._parsed.values():
            if kind == "start":
                records.starts[record["pid"]] = record
            elif kind == "done":
                records.done.add(record["pid"])
            elif kind == "error":
                records.errors.append(record)
            elif isinstance(record.get("code"), int):
                records.exits.append(record)
        records.errors.sort(key=lambda r: r["time"])
        records.exits.sort(key=lambda r: r["time"])
        return records
