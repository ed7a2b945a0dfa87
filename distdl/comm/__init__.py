"""Collectives between worker processes: one Communicator interface; MPI, ZeroMQ and local backends.

``comm/`` knows nothing of autograd: it moves contiguous arrays. The MPI and
ZeroMQ backends (and mpi4py, pyzmq) are imported only when ``init`` picks them.
"""

from distdl.comm.base import Communicator
from distdl.comm.errors import (CollectiveMismatchError, CollectiveTimeoutError, DistError, PeerLostError,
                                ProtocolError, RendezvousError)
from distdl.comm.local import LocalCommunicator
from distdl.comm.ordering import Request
from distdl.comm.signature import REDUCE_OPS
from distdl.comm.world import choose_backend, get_comm, init, launched_world_size, local_rank, rank, shutdown, world_size

__all__ = [
    "CollectiveMismatchError", "CollectiveTimeoutError", "Communicator", "DistError", "LocalCommunicator",
    "PeerLostError", "ProtocolError", "REDUCE_OPS", "RendezvousError", "Request", "choose_backend", "get_comm", "init",
    "launched_world_size", "local_rank", "rank", "shutdown", "world_size",
]
