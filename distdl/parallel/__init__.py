"""Data parallelism: the one package that joins the autograd engine and the communicator."""

from distdl.parallel.comm_hooks import allreduce_hook, fp16_compress_hook
from distdl.parallel.ddp import DistributedDataParallel
from distdl.parallel.errors import NonFiniteGradientError, NonFiniteLossError, StepMismatchError
from distdl.parallel.sync_batchnorm import SyncBatchNorm

__all__ = ["DistributedDataParallel", "NonFiniteGradientError", "NonFiniteLossError", "StepMismatchError",
           "SyncBatchNorm", "allreduce_hook", "fp16_compress_hook"]
