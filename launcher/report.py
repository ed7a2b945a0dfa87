"""The root cause of a failed attempt: the earliest worker error file, else the first rank that exited badly."""

import datetime
import glob
import json
import os
import sys

from launcher.procs import describe_exit


def read_error_files(directory):
    records = []
    for path in glob.glob(os.path.join(directory, "rank-*.json")):
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("time", 0))


def report_failure(failure, error_dir, output, stopped):
    """Print on stderr which rank failed first, how, its traceback or last output, and who was stopped."""
    records = read_error_files(error_dir)
    say = sys.stderr.write
    if records:
        first = records[0]
        when = datetime.datetime.fromtimestamp(first["time"]).strftime("%H:%M:%S")
        exit_note = f", {describe_exit(failure.code)}" if failure.rank == first["rank"] else ""
        say(f"distdl-run: root cause: rank {first['rank']} on {first['host']} raised {first['exception']} at "
            f"{when}{exit_note}:\n{first['traceback']}")
    elif failure.rank is None:
        say(f"distdl-run: mpiexec ended with {describe_exit(failure.code)}: a worker died without raising an "
            "exception (killed by a signal?); mpiexec's report above names its process\n")
    else:
        say(f"distdl-run: rank {failure.rank} failed with {describe_exit(failure.code)}; its last output:\n")
        for line in output.tails.get(failure.rank, []):
            say(f"    {line}\n")
    if stopped:
        say(f"distdl-run: stopped ranks {', '.join(map(str, sorted(stopped)))} because of it\n")
    sys.stderr.flush()
