"""Starting worker processes so that none outlives the launcher, and stopping them: SIGTERM, then SIGKILL."""

import ctypes
import os
import signal
import subprocess
import time

PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent():
    """In the child, before exec: get SIGKILL if the launcher dies, even by SIGKILL (Linux only)."""
    global _libc
    try:
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def start(command, env, pass_fds=()):
    """Start ``command`` in its own process group (its children go with it), output piped as text lines."""
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True, preexec_fn=_die_with_parent, errors="replace",
                            pass_fds=pass_fds)


def stop(processes, grace):
    """SIGTERM every process group still running, wait up to ``grace`` seconds, then SIGKILL; reap them all."""
    for p in processes:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        _signal_group(p, signal.SIGKILL)
        p.wait()


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)  # the worker's session: it and anything it started
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code):
    """'exit code 3' or 'signal SIGKILL' from a Popen return code."""
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
