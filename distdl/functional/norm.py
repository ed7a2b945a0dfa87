"""Batch normalisation, fused: batch statistics in training, running statistics in evaluation."""

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype


class BatchNorm(Function):
    """Normalise over every axis but 1 (channels); backward includes the path through the batch mean and variance."""

    def forward(self, x, weight, bias, *, mean, var, eps, training):
        xp = xp_of(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = 1 / xp.sqrt(var + eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, weight)
        self.training, self.shape = training, shape
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
                count = g.size // g.shape[1]
                gx = scale * (g - (gb.reshape(self.shape) + xhat * gw.reshape(self.shape)) / count)
            else:
                gx = g * scale
        return gx, gw, gb


def _array(value):
    return value.data if isinstance(value, Tensor) else value


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation as torch.nn.functional.batch_norm.

    In training the batch's statistics normalise, and the running statistics (if
    given) are updated in place with ``momentum``, the variance unbiased as PyTorch does.
    """
    x = input.data
    xp = xp_of(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expects (N, C, ...) input, got shape {input.shape}")
    channels = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    running_mean, running_var = _array(running_mean), _array(running_var)
    check_same_dtype("batch_norm", input, weight if weight is not None else running_mean)
    if training:
        count = x.size // channels
        if count < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, got input shape {input.shape}")
        mean, var = x.mean(axis=axes), x.var(axis=axes)
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
    return BatchNorm.apply(input, weight, bias, mean=mean, var=var, eps=eps, training=training)


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
