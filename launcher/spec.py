"""What to start: the command line, the backend, and each worker's environment (DESIGN.md's contract)."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from launcher.secret import VARIABLE as SECRET_VARIABLE

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# torchrun's, so that code written for torch finds its rank (under mpiexec each rank's keeper sets the per-rank ones)
TORCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BOTH_STREAMS = frozenset({"stdout", "stderr"})


def find_mpiexec():
    """The mpiexec next to this Python (the mpich wheel's), else the system's, else None."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def mpi_works(mpiexec, timeout=30):
    """Whether mpiexec can start a Python that initialises MPI through mpi4py, and why not."""
    if mpiexec is None:
        return False, "no mpiexec found (pip install mpich, or put one on PATH)"
    probe = [mpiexec, "-n", "1", sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{mpiexec} did not run: {exc}"
    if result.returncode:
        return False, f"{mpiexec} failed: {(result.stderr or result.stdout).strip()[-300:]}"
    return True, f"{mpiexec} works"


def reserve_port(host):
    """A listening socket on a free port of ``host``: handed to rank 0, so no other job can take the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(128)
    return listener


@dataclass
class JobSpec:
    nproc: int
    target: list  # ["script.py", args...] or ["-m", "module", args...]
    backend: str = "zmq"  # resolved: "mpi", "zmq" or "local" (one worker)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    max_restarts: int = 0
    checkpoint_dir: str = None
    timeout: float = None
    log_dir: str = None
    tee: dict = None  # --tee: {local rank (None: every one): the streams its log file keeps}; None: both, for all
    tag_output: bool = True
    hosts: str = None  # mpiexec -hosts a:2,b:2 (Hydra starts the workers on them); nproc is then the whole job's
    shown_local_ranks: set = None  # the local ranks whose output reaches the console (None: all)
    live: bool = False  # the console is a terminal: rank 0's progress bar is passed through as it redraws
    mpiexec: str = field(default_factory=find_mpiexec)

    @property
    def world_size(self):
        return self.nnodes * self.nproc

    def logged_streams(self, rank):
        """The streams ("stdout", "stderr") of ``rank`` that its log file keeps, as torchrun's --tee chooses
        (--log-dir alone: both)."""
        if self.log_dir is None:
            return frozenset()
        if self.tee is None:
            return BOTH_STREAMS
        local = rank - self.node_rank * self.nproc
        return self.tee.get(local, self.tee.get(None, frozenset()))

    def splits_streams(self, rank):
        """Whether ``rank``'s stderr needs a pipe of its own: its log file keeps only one of the two streams."""
        return len(self.logged_streams(rank)) == 1

    def worker_command(self):
        return [sys.executable, "-u", *self.target]

    def mpi_command(self, output_dir, wrap=list):
        """mpiexec, each rank's stdout and stderr in its own file of ``output_dir`` (whole lines, unlike -prepend-rank),
        each rank's command passed through ``wrap`` (its keeper)."""
        hosts = ["-hosts", self.hosts] if self.hosts else []
        return [self.mpiexec, *hosts, "-n", str(self.nproc), "-outfile-pattern", os.path.join(output_dir, "rank-%r.out"),
                "-errfile-pattern", os.path.join(output_dir, "rank-%r.err"), *wrap(self.worker_command())]

    def environments(self, attempt, run_id, worker_port, master_fd=None):
        """One environment per local worker (one in all for mpiexec, which gives each rank its own)."""
        base = {k: v for k, v in os.environ.items() if k not in TORCH_VARIABLES}
        base.pop(SECRET_VARIABLE, None)  # the workers get run tokens derived from it, never the job secret
        threads = str(max(1, len(os.sched_getaffinity(0)) // self.nproc))
        for name in THREAD_VARIABLES if not self.hosts else ():  # across hosts, dl.init() limits them per host
            base.setdefault(name, threads)  # the user's own setting wins
        base.update({
            "DISTDL_BACKEND": self.backend, "DISTDL_WORLD_SIZE": str(self.world_size),
            "DISTDL_LOCAL_WORLD_SIZE": str(self.nproc), "DISTDL_MASTER_ADDR": self.master_addr,
            "DISTDL_MASTER_PORT": str(worker_port), "DISTDL_RUN_ID": run_id, "DISTDL_RESTART_COUNT": str(attempt),
            "PYTHONUNBUFFERED": "1", "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(worker_port or _free_port()),
        })
        if self.live:
            base["DISTDL_LIVE_OUTPUT"] = "1"
            size = shutil.get_terminal_size()
            base.setdefault("COLUMNS", str(size.columns))  # what tqdm reads where its output is not the terminal
            base.setdefault("LINES", str(size.lines))
        if self.checkpoint_dir:
            base["DISTDL_CHECKPOINT_DIR"] = os.path.abspath(self.checkpoint_dir)
        if self.timeout:
            base["DISTDL_TIMEOUT"] = str(self.timeout)
        if self.backend == "mpi":
            return [base]
        environments = []
        for local in range(self.nproc):
            rank = self.node_rank * self.nproc + local
            env = dict(base, DISTDL_RANK=str(rank), DISTDL_LOCAL_RANK=str(local), RANK=str(rank),
                       LOCAL_RANK=str(local), WORLD_SIZE=str(self.world_size), LOCAL_WORLD_SIZE=str(self.nproc))
            if master_fd is not None and self.node_rank == 0 and local == 0:
                env["DISTDL_MASTER_FD"] = str(master_fd)
            environments.append(env)
        return environments


def _free_port():
    """A port for torch's MASTER_PORT under MPI, where distdl itself needs none (free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_run_id():
    return secrets.token_hex(16)
