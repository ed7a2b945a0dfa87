"""distdl: data-parallel deep learning on NumPy or CuPy, averaged over MPI or ZeroMQ."""

from distdl import data, functional, metrics, nn, optim
from distdl.autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad, set_grad_enabled, tensor
from distdl.backend import get_default_dtype, gpu_available, seed, set_default_dtype
from distdl.checkpoint import (CheckpointCorruptError, CheckpointError, CheckpointManager, load_checkpoint,
                               save_checkpoint)
from distdl.comm import (CollectiveMismatchError, CollectiveTimeoutError, DistError, PeerLostError, RendezvousError,
                         get_comm, init, local_rank, rank, shutdown, world_size)
from distdl.functional import concatenate, stack, where
from distdl.parallel import DistributedDataParallel
from distdl.version import __version__

__all__ = [
    "CheckpointCorruptError", "CheckpointError", "CheckpointManager", "CollectiveMismatchError", "CollectiveTimeoutError", "DistError", "DistributedDataParallel", "Function", "PeerLostError", "RendezvousError",
    "Tensor", "__version__", "concatenate", "data", "enable_grad", "functional", "get_comm", "init", "local_rank", "rank", "save_checkpoint", "shutdown", "world_size",
    "get_default_dtype", "gpu_available", "is_grad_enabled", "load_checkpoint", "metrics", "nn", "no_grad", "optim", "seed", "set_default_dtype", "set_grad_enabled", "stack",
    "tensor", "where",
]
