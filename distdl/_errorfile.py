"""The worker's side of the launcher's records: who started, who ended normally, who raised what.

distdl-run sets DISTDL_ERROR_DIR; importing distdl calls ``install()``, which writes
there (each file JSON, written whole by rename, named by rank and PID):

- ``start-<r>-<pid>.json`` at once: rank, PID, host, time. The launcher maps a PID
  to a rank with it, and knows this worker promises a completion record;
- ``done-<r>-<pid>.json`` at a normal interpreter exit (atexit): a worker that
  ended without it (``os._exit``, a signal, a crash of the interpreter) did not
  complete, whatever its exit code;
- ``error-<r>-<pid>.json`` on an uncaught exception (before the usual traceback):
  the exception and its traceback; the launcher names the earliest as the root cause.
"""

import atexit
import json
import os
import socket
import sys
import time
import traceback

from distdl.comm.world import MPI_RANK_VARIABLES


def _rank():
    for name in ("DISTDL_RANK",) + MPI_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _write(directory, kind, **fields):
    """Best effort: a record that cannot be written must never hide the worker's own outcome."""
    try:
        record = {"rank": _rank(), "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **fields}
        path = os.path.join(directory, f"{kind}-{record['rank']}-{record['pid']}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except Exception:
        pass


def install():
    directory = os.environ.get("DISTDL_ERROR_DIR")
    if not directory or getattr(sys.excepthook, "_distdl_error_file", False):
        return
    previous = sys.excepthook
    pid = os.getpid()

    def hook(kind, value, tb):
        _write(directory, "error", exception=kind.__name__, message=str(value),
               traceback="".join(traceback.format_exception(kind, value, tb)))
        previous(kind, value, tb)

    def completed():
        if os.getpid() == pid:  # not in a forked child that happens to run the atexit handlers
            _write(directory, "done")

    hook._distdl_error_file = True
    sys.excepthook = hook
    _write(directory, "start")
    atexit.register(completed)
