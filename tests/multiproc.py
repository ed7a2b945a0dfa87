"""Start real worker processes on loopback, under MPI (mpiexec) or ZeroMQ (one process per rank), with a hard timeout."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKERS = Path(__file__).resolve().parent / "workers"


def alive(pid):
    """Whether process ``pid`` still runs (a zombie is gone for our purpose; one reaped while we look, too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def mpiexec():
    """The mpiexec next to this Python (the mpich wheel's), else the system's."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def free_port():
    """A port free a moment ago (another process may take it before it is bound: prefer ``listening_socket``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_socket():
    """A bound, listening loopback socket for rank 0's rendezvous, handed over as distdl-run does (no race)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def zmq_env(rank, size, port, run_id, timeout, **extra):
    env = dict(os.environ, DISTDL_BACKEND="zmq", DISTDL_RANK=str(rank), DISTDL_LOCAL_RANK=str(rank),
               DISTDL_WORLD_SIZE=str(size), DISTDL_LOCAL_WORLD_SIZE=str(size), DISTDL_MASTER_ADDR="127.0.0.1",
               DISTDL_MASTER_PORT=str(port), DISTDL_RUN_ID=run_id, DISTDL_TIMEOUT=str(timeout),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Result:
    def __init__(self, returncodes, outputs):
        self.returncodes, self.outputs = returncodes, outputs

    def ok(self):
        return all(code == 0 for code in self.returncodes)

    def __str__(self):
        return "\n".join(f"--- rank {r} exit {c}\n{o}" for r, (c, o) in enumerate(zip(self.returncodes, self.outputs)))


class ZMQJob:
    """Ranks of ``script`` started with the ZeroMQ backend; ``finish`` collects them (killed at its timeout).

    Rank 0 inherits its rendezvous socket already listening, so no other process can take the port.
    """

    def __init__(self, size, script, *args, collective_timeout=20, env_for_rank=None, ranks=None, run_id=None):
        self.listener = listening_socket()
        self.port, self.run_id = self.listener.getsockname()[1], run_id or secrets.token_hex(8)
        self.size, self.script, self.args = size, script, args
        self.collective_timeout, self.env_for_rank = collective_timeout, env_for_rank
        self.procs = {}
        for rank in range(size) if ranks is None else ranks:
            self.start(rank)

    def start(self, rank):
        env = zmq_env(rank, self.size, self.port, self.run_id, self.collective_timeout)
        if self.env_for_rank:
            env.update({k: str(v) for k, v in self.env_for_rank(rank).items()})
        inherit = ()
        if rank == 0 and env["DISTDL_MASTER_PORT"] == str(self.port):
            inherit = (self.listener.fileno(),)
            env["DISTDL_MASTER_FD"] = str(self.listener.fileno())
        self.procs[rank] = subprocess.Popen([sys.executable, str(WORKERS / self.script), *map(str, self.args)],
                                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            pass_fds=inherit)
        if inherit:
            self.listener.close()  # rank 0 holds it now: the port closes when rank 0's rendezvous ends

    def finish(self, timeout):
        deadline = time.monotonic() + timeout
        outputs = []
        for p in self.procs.values():
            try:
                outputs.append(p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0])
            except subprocess.TimeoutExpired:
                p.kill()
                outputs.append(p.communicate()[0] + f"\n[killed by the test harness after {timeout} s]")
        self.listener.close()
        return Result([p.returncode for p in self.procs.values()], outputs)


def run_zmq(size, script, *args, timeout=60, collective_timeout=20, env_for_rank=None, ranks=None):
    """Run ranks of ``script`` with the ZeroMQ backend (all ``size``, or only ``ranks``); kill them at ``timeout``."""
    job = ZMQJob(size, script, *args, collective_timeout=collective_timeout, env_for_rank=env_for_rank, ranks=ranks)
    return job.finish(timeout)


def run_mpi(size, script, *args, timeout=60, collective_timeout=20):
    """Run ``script`` under ``mpiexec -n size``; kill the whole group at ``timeout``."""
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec found")
    env = dict(os.environ, DISTDL_TIMEOUT=str(collective_timeout), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("DISTDL_BACKEND", None)
    proc = subprocess.Popen([launcher, "-n", str(size), sys.executable, str(WORKERS / script), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output = proc.communicate()[0]
    return Result([proc.returncode], [output])


def run(backend, size, script, *args, **options):
    return (run_mpi if backend == "mpi" else run_zmq)(size, script, *args, **options)
