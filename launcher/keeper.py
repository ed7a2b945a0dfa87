"""The keeper: one small process between a launcher and each worker, so that no process of the job outlives it.

``python -I -S keeper.py GRACE -- COMMAND...`` makes itself a child subreaper
(PR_SET_CHILD_SUBREAPER), starts COMMAND and waits for it. Every descendant of
the worker, also one that called setsid or whose parent ended, is reparented to
the keeper instead of init, so the keeper can always find them. When the worker
ends, when the keeper is told to stop (SIGTERM, SIGINT, SIGHUP), or when its own
parent dies (the launcher SIGKILLed: PR_SET_PDEATHSIG plus a check of getppid),
it stops every remaining descendant (SIGTERM, GRACE seconds, SIGKILL), reaps
them, and exits as the worker did (same exit code, or killed by the same signal).

If DISTDL_ERROR_DIR is set, it writes ``exit-<rank>-<pid>.json`` there when the
worker ends: under mpiexec that is the only way the launcher learns which rank
ended first and how, since hydra's proxy, not the launcher, is the parent.

The launcher also imports this module for the same tree walk (``descendants``,
``stop_tree``). It runs as a file with the standard library only (``-I -S``),
so it never imports the launcher package or the engine.
"""

import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.05
WAKE_SECONDS = 0.2  # how often the keeper looks at its parent and its stop flag while the worker runs
RANK_VARIABLES = ("DISTDL_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_libc = None


def prctl(option, value):
    """prctl(2) on Linux; False where it is not available."""
    global _libc
    try:
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper():
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def parents():
    """{pid: parent pid} of every process, from /proc/<pid>/stat (the name field may hold spaces and parentheses)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        table[int(entry)] = int(fields[1])
    return table


def descendants(root):
    """Every process below ``root`` (children first-level first), read afresh from /proc."""
    children = {}
    for pid, parent in parents().items():
        children.setdefault(parent, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        below = [c for p in frontier for c in children.get(p, ())]
        found += below
        frontier = below
    return found


def reap_orphans(keep=()):
    """Collect the exit status of every ended child not in ``keep`` (a subreaper inherits zombies).

    Peeks with WNOWAIT, so the status of a child in ``keep`` is left for its Popen; orphans that ended after it
    wait until that child has been collected.
    """
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return  # no children at all
        if ended is None or ended.si_pid in keep:
            return
        try:
            os.waitpid(ended.si_pid, 0)
        except ChildProcessError:
            pass


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(grace, keep=()):
    """SIGTERM every descendant of this process, wait up to ``grace`` s for them to end, SIGKILL the rest, reap all.

    Processes in ``keep`` (Popen children whose status someone else collects) are signalled but not reaped here.
    """
    pids = descendants(os.getpid())
    _signal_all(pids, signal.SIGTERM)
    _signal_all(pids, signal.SIGCONT)  # a stopped process acts on SIGTERM only once it runs again
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap_orphans(keep)
        if not [p for p in descendants(os.getpid()) if not _is_zombie(p)]:
            break
        time.sleep(POLL_SECONDS)
    for _ in range(100):  # a process may fork while we kill: repeat until none is left
        pids = [p for p in descendants(os.getpid()) if not _is_zombie(p)]
        if not pids:
            break
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.01)
        reap_orphans(keep)
    reap_orphans(keep)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _rank():
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def write_exit_record(pid, code):
    """``exit-<rank>-<pid>.json``: which rank's worker ended, when, and how (code < 0: killed by signal -code)."""
    directory, rank = os.environ.get("DISTDL_ERROR_DIR"), _rank()
    if not directory or rank is None:
        return
    path = os.path.join(directory, f"exit-{rank}-{pid}.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"rank": rank, "pid": pid, "code": code, "time": time.time()}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # the launcher then learns less, but the job is not held up


def _exit_like(code):
    """Exit with the worker's code, or die of the signal that killed it (without a core file of our own)."""
    if code >= 0:
        os._exit(code)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    try:
        signal.signal(-code, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP have no handler to reset
    os.kill(os.getpid(), -code)
    os._exit(128 - code)


def _end_waiter(pid):
    """A wait that returns as soon as ``pid`` ends (a pidfd where Linux has one), or after a short while anyway."""
    try:
        poller = select.poll()
        poller.register(os.pidfd_open(pid), select.POLLIN)
        return lambda: poller.poll(WAKE_SECONDS * 1000)
    except (AttributeError, OSError):
        return lambda: time.sleep(POLL_SECONDS)


def _worker_dies_with_keeper():
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def torch_variables(environ):
    """Under mpiexec, torchrun's per-rank variables from Hydra's (the launcher gives all ranks one environment)."""
    pmi = {"RANK": "PMI_RANK", "WORLD_SIZE": "PMI_SIZE", "LOCAL_RANK": "MPI_LOCALRANKID",
           "LOCAL_WORLD_SIZE": "MPI_LOCALNRANKS"}
    if "DISTDL_RANK" not in environ and "DISTDL_BACKEND" in environ:
        environ.update({name: environ[source] for name, source in pmi.items() if source in environ})


def keep(grace, command):
    torch_variables(os.environ)
    parent = os.getppid()
    become_subreaper()
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    worker = subprocess.Popen(command, close_fds=False, preexec_fn=_worker_dies_with_keeper)
    wait_for_end = _end_waiter(worker.pid)
    code = None
    while code is None:
        code = worker.poll()
        if code is None and (stop or os.getppid() != parent):
            stop_tree(grace, keep=(worker.pid,))
            code = worker.wait()
            break
        reap_orphans(keep=(worker.pid,))
        wait_for_end()
    write_exit_record(worker.pid, code)
    stop_tree(grace)
    _exit_like(code)


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: keeper.py GRACE_SECONDS -- COMMAND...\n")
        return 2
    keep(float(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
