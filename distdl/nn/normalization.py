"""Batch and layer normalisation layers."""

import numpy as np

from distdl import functional as F
from distdl.backend import get_default_dtype
from distdl.functional.norm import reduced_batch_norm
from distdl.nn import init
from distdl.nn.init import empty_parameter
from distdl.nn.module import Module
from distdl.value_checks import readable


class _BatchNorm(Module):
    """Running statistics are buffers (saved, moved, not trained); evaluation normalises with them."""

    ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, *, bias=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter("weight", init.ones_(empty_parameter(num_features)) if affine else None)
        self.register_parameter("bias", init.zeros_(empty_parameter(num_features)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, get_default_dtype()))
            self.register_buffer("running_var", np.ones(num_features, get_default_dtype()))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._factory(device, dtype)

    def forward(self, input):
        self.check_input(input, self.num_features, "features", ndims=self.ndims)
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if momentum is None:  # a cumulative average, as torch; on a device the count is not read (a wait)
                tracked = self.num_batches_tracked.data
                momentum = 1.0 / (float(tracked) if readable(tracked) else tracked)
        use_batch_stats = self.training or not self.track_running_stats
        return reduced_batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                  use_batch_stats, momentum, self.eps, self._reduction() if use_batch_stats else None)

    def _reduction(self):
        """How batch statistics are summed beyond this batch: not at all (SyncBatchNorm: over the ranks)."""
        return None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L) input, per feature C."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over NCHW input, per channel."""

    ndims = (4,)


class LayerNorm(Module):
    """Normalise each sample over its trailing ``normalized_shape`` axes."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        affine = elementwise_affine
        self.register_parameter("weight", init.ones_(empty_parameter(*self.normalized_shape)) if affine else None)
        self.register_parameter("bias", init.zeros_(empty_parameter(*self.normalized_shape)) if affine and bias else None)
        self._factory(device, dtype)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"
