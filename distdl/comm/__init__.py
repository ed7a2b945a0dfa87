"""Collectives between worker processes: one Communicator interface, several backends.

Until a backend is initialised the world is this one process, unless the
environment says a launcher started several: then forgetting ``dl.init()``
would silently train independent copies, so it is an error instead.
"""

import os

from distdl.comm.base import REDUCE_OPS, Communicator
from distdl.comm.local import LocalCommunicator

_current = None

# Variables by which a launcher tells a process the size of its world.
WORLD_SIZE_VARIABLES = ("DISTDL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_world_size():
    """The world size a launcher (distdl-run, mpiexec) announced in the environment, else 1."""
    for name in WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


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


__all__ = ["Communicator", "LocalCommunicator", "REDUCE_OPS", "get_comm", "launched_world_size"]
