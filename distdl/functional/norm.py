"""Batch normalisation, fused: batch statistics in training, running statistics in evaluation."""

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype
from distdl.value_checks import check, readable


class BatchNorm(Function):
    """Normalise over every axis but 1 (channels); backward includes the path through the batch mean and variance.

    ``reduce`` (see batch_statistics) sums backward's per-channel gradient sums over the ranks that
    share the batch statistics; ``count`` is the number of values per channel they were taken over.
    """

    def forward(self, x, weight, bias, *, mean, var, eps, training, count=None, reduce=None):
        xp = xp_of(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = 1 / xp.sqrt(var + eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, weight)
        self.training, self.shape, self.count, self.reduce = training, shape, count, reduce
        return xhat * weight.reshape(shape) + bias.reshape(shape)

    def backward(self, g):
        xhat, inv_std, weight = self.saved
        axes = (0,) + tuple(range(2, g.ndim))
        gb = g.sum(axis=axes)
        gw = (g * xhat).sum(axis=axes)
        gx = None
        if self.needs_input_grad[0]:
            scale = (weight * inv_std).reshape(self.shape)
            if self.training:
                total_gb, total_gw = gb, gw
                if self.reduce is not None:
                    sums = xp_of(g).concatenate([gb, gw])
                    self.reduce(sums)
                    total_gb, total_gw = sums[:len(gb)], sums[len(gb):]
                gx = scale * (g - (total_gb.reshape(self.shape) + xhat * total_gw.reshape(self.shape)) / self.count)
            else:
                gx = g * scale
        return gx, gw, gb


def _array(value):
    return value.data if isinstance(value, Tensor) else value


def batch_statistics(x, reduce=None):
    """Per-channel mean and (biased) variance of ``x`` over every axis but 1, and the values per channel.

    ``reduce(array)`` sums an array in place over the ranks whose batches make one (SyncBatchNorm's
    allreduce); None takes this batch alone. Two passes (the mean, then the squared deviations)
    keep the variance accurate.
    """
    xp = xp_of(x)
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // x.shape[1]
    sums = x.sum(axis=axes)
    too_few = f"batch_norm: training needs more than one value per channel{' over all ranks' * (reduce is not None)}, " \
              f"got input shape {x.shape}"
    if reduce is None:
        if count < 2:
            raise ValueError(too_few)
    else:
        totals = xp.concatenate([sums, xp.full(1, count, sums.dtype)])  # a fill, no host-to-device copy
        reduce(totals)
        check(totals[-1:], lambda v: v[0] < 2, lambda v: too_few)  # at once on the host, once per step on a device
        sums, count = totals[:-1], totals[-1]  # on a device the count stays there: reading it would wait
        if readable(count):
            count = int(count)
    mean = sums / count
    centred = x - mean.reshape((1, -1) + (1,) * (x.ndim - 2))
    squares = (centred * centred).sum(axis=axes)
    if reduce is not None:
        reduce(squares)
    return mean, squares / count, count


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation as torch.nn.functional.batch_norm.

    In training the batch's statistics normalise, and the running statistics (if
    given) are updated in place with ``momentum``, the variance unbiased as PyTorch does.
    """
    return reduced_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, reduce=None)


def reduced_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, reduce):
    """batch_norm whose training statistics and their gradient sums are summed by ``reduce`` (see batch_statistics)."""
    x = input.data
    xp = xp_of(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expects (N, C, ...) input, got shape {input.shape}")
    channels = x.shape[1]
    running_mean, running_var = _array(running_mean), _array(running_var)
    check_same_dtype("batch_norm", input, weight if weight is not None else running_mean)
    count = None
    if training:
        mean, var, count = batch_statistics(x, reduce)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += (momentum * count / (count - 1)) * var
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation (training=False) needs running_mean and running_var")
        mean, var = running_mean, running_var
    if weight is None:
        weight = Tensor._from_op(xp.ones(channels, x.dtype), None, 0)
    if bias is None:
        bias = Tensor._from_op(xp.zeros(channels, x.dtype), None, 0)
    return BatchNorm.apply(input, weight, bias, mean=mean, var=var, eps=eps, training=training, count=count,
                           reduce=reduce)


class LayerNorm(Function):
    """Normalise over the trailing ``ndim`` axes of each sample; weight and bias are optional inputs."""

    def forward(self, x, *affine, ndim, eps):
        axes = tuple(range(x.ndim - ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        centred = x - mean
        inv_std = 1 / xp_of(x).sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
        xhat = centred * inv_std
        self.save_for_backward(xhat, inv_std, *affine[:1])
        self.axes = axes
        if not affine:
            return xhat
        out = xhat * affine[0]
        if len(affine) == 2:
            out += affine[1]
        return out

    def backward(self, g):
        xhat, inv_std, *weight = self.saved
        leading = tuple(range(g.ndim - len(self.axes)))
        gxhat = g * weight[0] if weight else g
        gx = inv_std * (gxhat - gxhat.mean(axis=self.axes, keepdims=True)
                        - xhat * (gxhat * xhat).mean(axis=self.axes, keepdims=True))
        grads = (gx,)
        if weight:
            grads += ((g * xhat).sum(axis=leading),)
        if len(self.needs_input_grad) == 3:
            grads += (g.sum(axis=leading),)
        return grads


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the trailing ``normalized_shape`` axes, as torch.nn.functional.layer_norm."""
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(normalized_shape):]) != normalized_shape:
        raise ValueError(f"layer_norm: input of shape {input.shape} does not end in normalized_shape {normalized_shape}")
    if bias is not None and weight is None:
        raise ValueError("layer_norm: a bias needs a weight (pass weight=ones)")
    check_same_dtype("layer_norm", input, weight)
    affine = tuple(t for t in (weight, bias) if t is not None)
    return LayerNorm.apply(input, *affine, ndim=len(normalized_shape), eps=eps)
