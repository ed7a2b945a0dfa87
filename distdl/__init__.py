"""distdl: data-parallel deep learning on NumPy or CuPy, averaged over MPI or ZeroMQ."""

from distdl import _errorfile, callbacks, data, functional, metrics, nn, optim
from distdl.autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad, set_grad_enabled, tensor
from distdl.backend import get_default_dtype, gpu_available, seed, set_default_dtype
from distdl.checkpoint import (CheckpointCorruptError, CheckpointDirectoryInUseError, CheckpointError,
                               CheckpointManager, load_checkpoint, save_checkpoint)
from distdl.comm import (CollectiveMismatchError, CollectiveTimeoutError, DistError, PeerLostError, ProtocolError,
                         RendezvousError, get_comm, init, local_rank, rank, shutdown, world_size)
from distdl.functional import cat, concatenate, stack, where
from distdl.parallel import DistributedDataParallel, NonFiniteGradientError, NonFiniteLossError, StepMismatchError
from distdl.trainer import History, Trainer
from distdl.version import __version__

_errorfile.install()  # under distdl-run: an uncaught exception is reported to the launcher

__all__ = [
    "__version__", "callbacks", "CheckpointCorruptError", "CheckpointError", "CheckpointManager", "CollectiveMismatchError",
    "CollectiveTimeoutError", "cat", "concatenate", "data", "DistError", "DistributedDataParallel", "enable_grad", "Function",
    "functional", "get_comm", "get_default_dtype", "gpu_available", "History", "init", "is_grad_enabled", "load_checkpoint",
    "local_rank", "metrics", "nn", "no_grad", "optim", "PeerLostError", "rank", "RendezvousError", "save_checkpoint",
    "seed", "set_default_dtype", "set_grad_enabled", "shutdown", "stack", "Tensor", "tensor", "Trainer", "where", "world_size",
    "CheckpointDirectoryInUseError", "NonFiniteGradientError", "NonFiniteLossError", "ProtocolError",
    "StepMismatchError",
]
