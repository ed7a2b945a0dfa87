"""Report an uncaught exception to the launcher: its traceback goes to an error file, no decorator needed.

distdl-run sets DISTDL_ERROR_DIR; importing distdl installs this hook, which
writes ``rank-<r>.json`` there (rank, host, time, exception, traceback) before the
usual traceback is printed. The launcher names the earliest one as the root cause.
"""

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


def install():
    directory = os.environ.get("DISTDL_ERROR_DIR")
    if not directory or getattr(sys.excepthook, "_distdl_error_file", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            record = {"rank": _rank(), "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                      "exception": kind.__name__, "message": str(value),
                      "traceback": "".join(traceback.format_exception(kind, value, tb))}
            path = os.path.join(directory, f"rank-{record['rank']}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(record, f)
            os.replace(path + ".tmp", path)
        except Exception:  # the report is best effort: never hide the original error
            pass
        previous(kind, value, tb)

    hook._distdl_error_file = True
    sys.excepthook = hook
