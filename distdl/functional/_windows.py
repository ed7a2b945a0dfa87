"""Sliding-window views shared by convolution and pooling: padding, window views, and their adjoint."""

import numbers

from distdl.backend import xp_of


def pair(value, name):
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def output_size(size, kernel, stride, dilation):
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def pad2d(x, padding, value=0):
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return x
    return xp_of(x).pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def unpad2d(x, padding):
    (top, bottom), (left, right) = padding
    return x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]


def empty_in_layout(shape, dtype, like):
    """An uninitialised array of NCHW ``shape``, stored channels-last where ``like`` (axis 1 channels,
    last axis width) is."""
    xp = xp_of(like)
    if like.strides[1] < like.strides[-1]:
        n, c, h, w = shape
        return xp.empty((n, h, w, c), dtype).transpose(0, 3, 1, 2)
    return xp.empty(shape, dtype)


def window_view(x, kernel, stride, dilation, out_hw):
    """Every kernel window of ``x`` (N, C, H, W) as a (N, C, KH, KW, OH, OW) strided view, without copying.

    With the output pixels last, each kernel position's slice ``[:, :, i, j]`` keeps
    whole rows of the input contiguous, so copying it (im2col) streams memory.
    """
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    sn, sc, sy, sx = x.strides
    return xp_of(x).lib.stride_tricks.as_strided(
        x, (n, c, kh, kw, oh, ow), (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw))


def scatter_windows(grad_at, like, padded_shape, kernel, stride, dilation):
    """The adjoint of ``window_view``: add each kernel position's (N, C, OH, OW) gradient back into the input.

    ``grad_at(i, j)`` gives that gradient, asked for in row-major order of (i, j); one
    vectorised add per kernel position (9 for a 3x3 kernel), none per pixel.
    ``like`` gives the array module and dtype.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    grad = xp_of(like).zeros(padded_shape, like.dtype)
    for i in range(kh):
        for j in range(kw):
            g = grad_at(i, j)
            oh, ow = g.shape[2], g.shape[3]
            grad[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += g
    return grad
