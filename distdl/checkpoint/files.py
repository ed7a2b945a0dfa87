"""File-system safety for checkpoints: open only regular files, name temporaries by writer, clear dead writers'.

A FIFO named like a checkpoint would block a plain ``open`` forever, a device could
have side effects, and a symbolic link could lead anywhere: so a file is looked at
with ``lstat`` before it is opened, opened without following a last link and without
blocking, and checked again with ``fstat`` on the open descriptor.
"""

import logging
import os
import re
import secrets
import socket
import stat

from distdl.checkpoint.errors import CheckpointCorruptError

log = logging.getLogger("distdl.checkpoint")

HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-[0-9a-f]{8}$")

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFLNK: "a symbolic link"}


def _kind(mode):
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path, within=None):
    """A binary file object of ``path``, which must be a regular file (inside ``within`` when given).

    ``within`` is the checkpoint directory: a symbolic link there may point to another
    file in the same directory, never out of it. Without it (a path the caller chose)
    links are followed, but the target must still be a regular file.
    """
    target = os.path.realpath(path)
    if within is not None:
        root = os.path.realpath(within)
        if os.path.commonpath([root, target]) != root:
            raise CheckpointCorruptError(f"{path}: a symbolic link leading out of {within} (to {target}): not opened")
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        raise  # a file that vanished is not a damaged one
    except OSError as exc:
        raise CheckpointCorruptError(f"{path}: cannot be looked at ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointCorruptError(f"{path}: {_kind(info.st_mode)}, not a regular file: not opened")
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointCorruptError(f"{path}: cannot be opened ({exc.strerror})") from exc
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):  # replaced between lstat and open
        os.close(descriptor)
        raise CheckpointCorruptError(f"{path}: {_kind(mode)}, not a regular file: not opened")
    return os.fdopen(descriptor, "rb")


def is_regular(path):
    """Whether ``path`` itself (not a link's target) is a regular file now."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def temporary_path(path):
    """Where to write ``path`` before renaming it into place; the name says which host and PID writes it."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid):
    """Whether process ``pid`` of this host still runs (a zombie has stopped writing: it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc to ask: keep the file rather than risk a live writer's


def remove_dead_temporaries(directory):
    """Remove the temporary files in ``directory`` whose writer was on this host and has died."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        found = _TEMPORARY.match(name)
        if not found or found["host"] != HOST or _alive(int(found["pid"])):
            continue
        path = os.path.join(directory, name)
        if not is_regular(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue  # another process cleaned it up first
        log.info("removed %s, left by writer PID %s on %s, which died before finishing it", path, found["pid"], HOST)
