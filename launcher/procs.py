"""Starting workers, each under a keeper (launcher/keeper.py), and stopping them: SIGTERM, then SIGKILL, then a sweep.

The launcher is itself a child subreaper: a process whose keeper was SIGKILLed
is reparented to the launcher, and ``sweep()`` stops and reaps it at the end of
every attempt. If the launcher dies, even by SIGKILL, each keeper gets SIGTERM
(PR_SET_PDEATHSIG) and stops its worker and all that worker's descendants.
"""

import os
import signal
import subprocess
import sys
import time

from launcher import keeper

KEEPER_GRACE = 2.0  # the keeper's own SIGTERM-to-SIGKILL wait for its worker's processes
KEEPER = os.path.abspath(keeper.__file__)


def kept(command):
    """``command`` run under a keeper: a fresh interpreter, standard library only, no site, no user paths."""
    return [sys.executable, "-I", "-S", KEEPER, str(KEEPER_GRACE), "--", *command]


def _stop_with_launcher():
    """In the keeper, before exec: SIGTERM (which it handles by stopping its tree) when the launcher dies."""
    keeper.prctl(keeper.PR_SET_PDEATHSIG, signal.SIGTERM)


def start(command, env, pass_fds=(), split_streams=False):
    """Start ``command`` under a keeper in its own session, its output on one pipe (read as it comes: Output.pump),
    or with ``split_streams`` its stderr on a second one (the order between the two is then that of arrival)."""
    stderr = subprocess.PIPE if split_streams else subprocess.STDOUT
    return subprocess.Popen(kept(command), env=env, stdout=subprocess.PIPE, stderr=stderr, bufsize=0,
                            start_new_session=True, preexec_fn=_stop_with_launcher, pass_fds=pass_fds)


def stop(processes, grace):
    """SIGTERM every keeper's session, wait up to ``grace`` s (the keepers stop their trees), then SIGKILL; reap."""
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


def sweep(grace):
    """Stop and reap every process still below the launcher (orphans of keepers that were SIGKILLed).

    Call it only once every Popen of the attempt has been waited for: it reaps any ended child.
    """
    keeper.stop_tree(grace)


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)  # the keeper's session: it, its worker, and what the worker did not setsid
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
