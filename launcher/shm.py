"""Shared-memory segments a failed attempt leaves in /dev/shm: MPICH's and distdl's own, removed when it ends.

MPICH unlinks its intra-node segments (``mpich_shm_*``) at MPI_Finalize; a rank that
aborts or is killed never gets there, so every failed MPI job would leave a few MiB of
RAM behind, and a job that restarts after failures more each time. distdl's ZeroMQ
segments (``distdl-*``) are unlinked once mapped, but a rank killed in the moment
before leaves its file. When an attempt ends, after its processes are gone, the
segments of this user's that were made since it started and that no live process maps
are removed: another job's running segments are mapped by its ranks and stay.
"""

import contextlib
import os
import re
import stat

DIRECTORY = "/dev/shm"
SEGMENT = re.compile(r"mpich_shm_[0-9a-f]+_\d+|distdl-[0-9a-f]{32}")  # MPICH's names; distdl's (shared_memory.py)
CLOCK_SLACK_SECONDS = 1.0  # a segment made in the second before the attempt's start counts as its


def mapped_paths():
    """Every file that a process this user can read the maps of has mapped (deleted or not)."""
    paths = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split(None, 5)
                    if len(fields) == 6:
                        paths.add(fields[5].rstrip("\n").removesuffix(" (deleted)"))
    return paths


def leftovers(since, directory=DIRECTORY):
    """Paths of this user's segments in ``directory`` made at or after ``since`` (time.time()) that no process maps."""
    try:
        names = [n for n in os.listdir(directory) if SEGMENT.fullmatch(n)]
    except OSError:
        return []
    candidates = []
    for name in names:
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and \
                    info.st_ctime >= since - CLOCK_SLACK_SECONDS:
                candidates.append(path)
    if not candidates:
        return []
    in_use = mapped_paths()
    return [path for path in candidates if path not in in_use]


def remove_leftovers(since, directory=DIRECTORY):
    """Remove ``leftovers(since)``; the paths removed."""
    removed = []
    for path in leftovers(since, directory):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: the job's end goes on
            os.unlink(path)
            removed.append(path)
    return removed
