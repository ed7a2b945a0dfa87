"""Data parallelism: the one package that joins the autograd engine and the communicator."""

from distdl.parallel.ddp import DistributedDataParallel
from distdl.parallel.sync_batchnorm import SyncBatchNorm

__all__ = ["DistributedDataParallel", "SyncBatchNorm"]
