"""One job per checkpoint directory: an advisory ``fcntl`` lock on a file in it, with the holder's identity.

Two jobs saving into one directory overwrite each other's steps and delete each
other's files in rotation; the lock makes the second fail at once, naming the first.
The kernel drops the lock when its process dies, so the next attempt of a job that
``distdl-run`` restarts takes it again. POSIX locks belong to the process and any
close of the file drops them, so a process opens the lock file once per directory
and counts its claims.
"""

import fcntl
import hashlib
import json
import os
import socket
import stat
import sys
import time

from distdl.checkpoint.errors import CheckpointDirectoryInUseError, CheckpointError

LOCK_NAME = ".distdl-checkpoint.lock"
_held = {}  # (pid, device, inode) of a directory -> [descriptor, claims]


def _identity():
    """This process as the holder: host, PID, start time, command, and a digest of the run token (never the token)."""
    token = os.environ.get("DISTDL_RUN_ID")
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run": hashlib.sha256(token.encode()).hexdigest()[:12] if token else None,
            "command": " ".join(sys.argv)[:200]}


def _describe(raw):
    try:
        holder = json.loads(raw)
        run = f", run {holder['run']}" if holder.get("run") else ""
        return (f"PID {holder['pid']} on {holder['host']} since {holder['since']}{run} "
                f"({holder.get('command', '')!r})")
    except (ValueError, TypeError, KeyError, AttributeError):
        return "a process that has not written its identity yet"


def claim(directory):
    """Hold ``directory`` for this process (again, if it already does); the key to ``release`` it with."""
    os.makedirs(directory, exist_ok=True)
    info = os.stat(directory)
    key = (os.getpid(), info.st_dev, info.st_ino)  # a forked child does not inherit the parent's lock
    if key in _held:
        _held[key][1] += 1
        return key
    path = os.path.join(directory, LOCK_NAME)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CheckpointError(f"{path}: the lock file cannot be opened ({exc.strerror}); if it is a link or "
                              "not a file, remove it") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CheckpointError(f"{path}: the lock file is not a regular file: remove it")
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _describe(os.pread(descriptor, 4096, 0))
        os.close(descriptor)
        raise CheckpointDirectoryInUseError(
            f"checkpoint directory {directory} is in use by another job: {holder}. Two jobs in one directory "
            "overwrite each other's checkpoints: give this job its own --checkpoint-dir, or stop the other "
            "one first") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(_identity()).encode(), 0)
    _held[key] = [descriptor, 1]
    return key


def release(key):
    """Give up one claim; the lock goes with the last."""
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])
