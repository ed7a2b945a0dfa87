"""The root cause of a failed attempt on stderr: the earliest worker error record, else the failure itself."""

import datetime
import sys

from launcher.failure import Kind
from launcher.procs import describe_exit

WORKER_KINDS = (Kind.WORKER_FAILED, Kind.SIGNALLED, Kind.WORKER_INCOMPLETE, Kind.MPIEXEC_FAILED)


def report_failure(failure, records, output, stopped):
    """Print which rank failed first, how, its traceback or last output, and who was stopped because of it."""
    say = sys.stderr.write
    if failure.rank is not None:
        error = records.error_of(failure.rank, failure.pid)
    else:  # mpiexec failed and only the records can say which rank raised first
        error = records.errors[0] if records.errors and failure.kind in WORKER_KINDS else None
    if error is not None:
        when = datetime.datetime.fromtimestamp(error["time"]).strftime("%H:%M:%S")
        traceback = error.get("traceback", "")
        last = traceback.strip().splitlines()[-1] if traceback.strip() else ""
        shown = last and output.showed(error["rank"], last)
        say(f"distdl-run: root cause: rank {error['rank']} on {error.get('host')} raised {error.get('exception')} "
            f"at {when}, {describe_exit(failure.code)}" + (f" (its traceback is above, in its output):\n{last}\n"
                                                           if shown else f":\n{traceback}"))
    else:
        say(f"distdl-run: {failure.describe()}")
        tail = output.tails.get(failure.rank, []) if failure.rank is not None else []
        say("; its last output:\n" if tail else "\n")
        for line in tail:
            say(f"    {line}\n")
    if stopped:
        ranks = "rank" if len(stopped) == 1 else "ranks"
        say(f"distdl-run: stopped {ranks} {', '.join(map(str, sorted(stopped)))} because of it\n")
    sys.stderr.flush()
