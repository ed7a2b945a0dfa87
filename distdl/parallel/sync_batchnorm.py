"""SyncBatchNorm: batch statistics over the global batch, reduced across ranks in forward and backward.

With per-rank BatchNorm each replica normalises by the statistics of its own
shard of the batch; SyncBatchNorm gives every rank the mean and variance of the
whole global batch, so N workers compute what one worker with the N-times batch
would. Forward reduces the per-channel sums (two passes: the mean, then the sum of
squared deviations, which keeps the variance accurate); backward reduces the sums
of the output gradient and of its product with the normalised input. Both are BatchNorm's
own code (functional.norm.batch_statistics and BatchNorm), given an allreduce as the reduction.
"""

from distdl.comm import get_comm
from distdl.nn.normalization import BatchNorm1d, BatchNorm2d, _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, ...) inputs whose training statistics cover every rank's batch.

    ``comm`` defaults to the initialised communicator. In evaluation it normalises
    with the running statistics, which are the same on every rank.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, comm=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm

    def _reduction(self):
        comm = self.comm if self.comm is not None else get_comm()
        return lambda array: comm.allreduce(array, "sum")

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """Replace every BatchNorm1d/BatchNorm2d in ``module`` by a SyncBatchNorm with the same state."""
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       comm)
            state = module.state_dict()
            if state:
                sync.to(next(v for v in state.values() if v.dtype.kind == "f").dtype)
            sync.load_state_dict(state)
            sync.train(module.training)
            return sync
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child, comm)
            if converted is not child:
                setattr(module, name, converted)
        return module


__all__ = ["SyncBatchNorm"]
