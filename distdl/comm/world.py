"""The process's communicator: ``dl.init`` chooses and starts a backend, ``dl.get_comm`` returns it.

``backend="auto"`` picks MPI when mpirun/mpiexec started the process (their
environment variables say so), the backend the launcher names in DISTDL_BACKEND
when distdl-run started it, the ZeroMQ rendezvous under srun without PMI, and a
local world of one otherwise. It is never a silent world of one: where a known
launcher announced several processes (launchers.py), init joins them or raises
saying what to do. It then limits BLAS and OpenMP threads to the cores per local
rank (threads.py) unless the user chose.

A communicator still open when the interpreter exits is closed then, with the
closing barrier; if that fails the process exits 1, never 0. A process ending
on an uncaught exception closes it at once, without the barrier.
"""

import atexit
import logging
import os
import sys

from distdl.comm import launchers
from distdl.comm.local import LocalCommunicator
from distdl.comm.placement import place
from distdl.comm.threads import limit_threads

log = logging.getLogger("distdl.comm")

BACKENDS = ("auto", "mpi", "zmq", "local")
# Variables by which MPI launchers (MPICH's Hydra, Open MPI, PMIx) announce a rank.
MPI_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
# Variables by which a launcher tells a process the size of its world.
WORLD_SIZE_VARIABLES = ("DISTDL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
DEFAULT_TIMEOUT = 300.0

_current = None
_uncaught = []  # set by the excepthook: the interpreter is ending on an error
_exit_hooks = []  # installed once


def launched_world_size():
    """The world size a launcher (distdl-run, mpiexec) announced in the environment, else 1."""
    for name in WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def choose_backend(requested="auto"):
    """The backend ``init(requested)`` uses, and why."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested, "asked for"
    started_by_mpi = [name for name in MPI_RANK_VARIABLES if name in os.environ]
    if started_by_mpi:
        return "mpi", f"started by an MPI launcher ({started_by_mpi[0]} is set)"
    if os.environ.get("DISTDL_BACKEND") in ("mpi", "zmq"):
        return os.environ["DISTDL_BACKEND"], "named by the launcher in DISTDL_BACKEND"
    if launchers.slurm_step_size():
        return "zmq", f"started by srun without PMI (SLURM_STEP_NUM_TASKS={launchers.slurm_step_size()})"
    several = launchers.announced()
    if several:
        raise RuntimeError(_unjoined(*several))
    return "local", "no launcher in the environment"


def _required(name):
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"the zmq backend needs {name} in the environment: start the workers with distdl-run, "
                           "or set DISTDL_RANK, DISTDL_WORLD_SIZE, DISTDL_MASTER_ADDR, DISTDL_MASTER_PORT and "
                           "DISTDL_RUN_ID yourself")
    return value


def init(backend="auto", timeout=None, device="auto"):
    """Start this process's communicator (once) and return it.

    ``timeout``: seconds a collective may wait for a peer before failing with an
    error naming it (default DISTDL_TIMEOUT, else 300). ``device``: "auto" (GPU
    ``local_rank % GPUs`` where CuPy sees one, else the host), "cpu", "cuda", "cuda:N"
    or "sim"; DISTDL_DEVICE wins (placement.py).
    """
    global _current
    name, reason = choose_backend(backend)
    if _current is not None:
        if backend != "auto" and _current.backend != name:
            raise RuntimeError(f"distdl is already initialised with the {_current.backend} backend; "
                               f"call dl.shutdown() before init(backend={backend!r})")
        return _current
    timeout = float(timeout if timeout is not None else os.environ.get("DISTDL_TIMEOUT", DEFAULT_TIMEOUT))
    if name == "mpi":
        from distdl.comm.mpi import MPICommunicator, abort_on_uncaught_exception

        _current = MPICommunicator(timeout)
        abort_on_uncaught_exception()
    elif name == "zmq":
        from distdl.comm.zmq_backend import ZMQCommunicator

        step = launchers.slurm_step() if "DISTDL_BACKEND" not in os.environ else None
        if step:
            _current = ZMQCommunicator(step["rank"], step["size"], step["master_addr"], step["master_port"],
                                       step["run_id"], timeout)
        else:
            _current = ZMQCommunicator(int(_required("DISTDL_RANK")), int(_required("DISTDL_WORLD_SIZE")),
                                       _required("DISTDL_MASTER_ADDR"), int(_required("DISTDL_MASTER_PORT")),
                                       _required("DISTDL_RUN_ID"), timeout)
    else:
        _current = LocalCommunicator()
    _close_at_exit_once()
    mismatch = _mismatch(_current) if backend != "local" else None  # a world of one asked for by name is kept
    if mismatch:
        _current.abandon(mismatch)
        _current = None
        raise RuntimeError(mismatch)
    log.debug("distdl: %s backend (%s), rank %d of %d", name, reason, _current.rank, _current.size)
    limit_threads(_current.local_size)
    try:
        place(device, _current)
    except BaseException as exc:  # a world without its device is of no use: a later init starts afresh
        _current.abandon(f"this rank found no device to compute on: {exc}")
        _current = None
        raise
    return _current


def _unjoined(launcher, size, variable):
    """Why auto found no backend for the several processes ``launcher`` announced, and what to do."""
    if launcher == "torchrun":
        return (f"torchrun started this process as rank {os.environ.get('RANK')} of {size} ({variable}={size}), "
                "but distdl does not join torch's rendezvous: start the script with distdl-run, which takes "
                f"torchrun's options and sets the same variables (distdl-run --nproc-per-node "
                f"{os.environ.get('LOCAL_WORLD_SIZE', size)} script.py)")
    return (f"{launcher} announced {size} processes ({variable}={size}) but named no backend: start the script "
            "with distdl-run, or call dl.init() with the backend (\"mpi\" or \"zmq\") and its variables")


def _mismatch(comm):
    """Why the world formed is not the one the launcher announced, and what to do; None when it is."""
    several = launchers.announced()
    if several is None or several[1] == comm.size:
        return None
    launcher, size, variable = several
    name = {"mpi": "MPI", "zmq": "ZeroMQ"}.get(comm.backend, comm.backend)
    advice = ("mpi4py's MPI is not the MPI whose launcher started this process: start it with the mpiexec of "
              f"mpi4py's MPI ({os.path.join(sys.prefix, 'bin', 'mpiexec')} for the mpich wheel), or with distdl-run"
              if comm.backend == "mpi" else "start every process with the same launcher, or with distdl-run")
    return f"{launcher} announced {size} processes ({variable}={size}) but the {name} backend formed a world of " \
           f"{comm.size}: {advice}"


def get_comm():
    """The initialised communicator; a world of one when this process was started alone."""
    global _current
    if _current is None:
        size = launched_world_size()
        if size > 1:
            raise RuntimeError(
                f"this process is one of {size} workers but distdl's communicator is not initialised: "
                "call dl.init() at the start of the script")
        _current = LocalCommunicator()
    return _current


def shutdown():
    """Close the communicator (after the collectives in flight); a later ``init`` starts a new one."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


def _close_at_exit_once():
    if _exit_hooks:
        return
    _exit_hooks.append(_close_at_exit)
    previous = sys.excepthook

    def note_uncaught(kind, value, traceback):
        _uncaught.append(kind)
        previous(kind, value, traceback)

    sys.excepthook = note_uncaught
    atexit.register(_close_at_exit)


def _close_at_exit():
    """Close what the script left open; a failure of the closing barrier makes the exit status 1."""
    global _current
    comm, _current = _current, None
    if comm is None:
        return
    if _uncaught:
        comm.abandon("the process ends on an uncaught exception")
        return
    try:
        comm.close()
    except BaseException as exc:  # atexit would print it and still exit 0
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


def rank():
    return get_comm().rank


def world_size():
    return get_comm().size


def local_rank():
    return get_comm().local_rank
