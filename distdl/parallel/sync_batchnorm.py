"""SyncBatchNorm: batch statistics over the global batch, reduced across ranks in forward and backward.

With per-rank BatchNorm each replica normalises by the statistics of its own
shard of the batch; SyncBatchNorm gives every rank the mean and variance of the
whole global batch, so N workers compute what one worker with the N-times batch
would. Forward reduces the per-channel sums (two passes: the mean, then the sum of
squared deviations, which keeps the variance accurate); backward reduces the sums
of the output gradient and of its product with the normalised input.
"""

from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.comm import get_comm
from distdl.functional.norm import BatchNorm as BatchNormFunction
from distdl.nn.normalization import BatchNorm1d, BatchNorm2d, _BatchNorm


class _SyncBatchNormFunction(BatchNormFunction):
    """BatchNorm whose backward uses the gradient sums of the global batch."""

    def forward(self, x, weight, bias, *, mean, var, eps, comm, count):
        self.comm, self.count = comm, count
        return super().forward(x, weight, bias, mean=mean, var=var, eps=eps, training=True)

    def backward(self, g):
        xhat, inv_std, weight = self.saved
        axes = (0,) + tuple(range(2, g.ndim))
        gb, gw = g.sum(axis=axes), (g * xhat).sum(axis=axes)
        gx = None
        if self.needs_input_grad[0]:
            xp = xp_of(g)
            sums = xp.concatenate([gb, gw])
            self.comm.allreduce(sums, "sum")
            channels = len(gb)
            total_gb, total_gw = sums[:channels].reshape(self.shape), sums[channels:].reshape(self.shape)
            gx = (weight * inv_std).reshape(self.shape) * (g - (total_gb + xhat * total_gw) / self.count)
        return gx, gw, gb


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, ...) inputs whose training statistics cover every rank's batch.

    ``comm`` defaults to the initialised communicator. In evaluation it normalises
    with the running statistics, which are the same on every rank.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, comm=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm

    def forward(self, input):
        if not self.training and self.track_running_stats:
            return super().forward(input)
        self.check_input(input, self.num_features, "features")
        comm = self.comm if self.comm is not None else get_comm()
        x = input.data
        xp = xp_of(x)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        totals = xp.concatenate([x.sum(axis=axes), xp.array([x.size // x.shape[1]], x.dtype)])
        comm.allreduce(totals, "sum")
        count = int(totals[-1])
        if count < 2:
            raise ValueError(f"{self!r}: training needs more than one value per channel over all ranks")
        mean = totals[:-1] / count
        squares = ((x - mean.reshape(shape)) ** 2).sum(axis=axes)
        comm.allreduce(squares, "sum")
        var = squares / count
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked.data)
            running_mean, running_var = self.running_mean.data, self.running_var.data
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += (momentum * count / (count - 1)) * var
        weight, bias = self._affine(xp, x)
        return _SyncBatchNormFunction.apply(input, weight, bias, mean=mean, var=var, eps=self.eps, comm=comm,
                                            count=count)

    def _affine(self, xp, x):
        if self.affine:
            return self.weight, self.bias
        ones = Tensor._from_op(xp.ones(self.num_features, x.dtype), None, 0)
        zeros = Tensor._from_op(xp.zeros(self.num_features, x.dtype), None, 0)
        return ones, zeros

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
