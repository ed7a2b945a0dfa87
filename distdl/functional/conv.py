"""2-d convolution as im2col + one GEMM: strided window views, no Python loop over pixels or samples."""

import numbers

from distdl.autograd.function import Function
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


def windows(x, kernel, stride, dilation, out_hw, order="nhwc"):
    """A strided view of every kernel window of ``x`` (N, C, H, W), without copying.

    ``order="nhwc"`` gives (N, OH, OW, C, KH, KW), the row order of the im2col matrix;
    ``order="nchw"`` gives (N, C, OH, OW, KH, KW), the order of a pooled output.
    """
    xp = xp_of(x)
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    sn, sc, sy, sx = x.strides
    if order == "nhwc":
        shape, strides = (n, oh, ow, c, kh, kw), (sn, sy * sh, sx * sw, sc, sy * dh, sx * dw)
    else:
        shape, strides = (n, c, oh, ow, kh, kw), (sn, sc, sy * sh, sx * sw, sy * dh, sx * dw)
    return xp.lib.stride_tricks.as_strided(x, shape, strides)


def pad2d(x, padding, value=0):
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return x
    return xp_of(x).pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def unpad2d(x, padding):
    (top, bottom), (left, right) = padding
    return x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]


def scatter_windows(grad_windows, like, padded_shape, kernel, stride, dilation):
    """The adjoint of ``windows``: add each window position's gradient back into the input.

    ``grad_windows[i][j]`` is the (N, C, OH, OW) gradient of kernel position (i, j);
    one vectorised add per kernel position (9 for a 3x3 kernel), none per pixel.
    ``like`` gives the array module and dtype.
    """
    xp = xp_of(like)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    grad = xp.zeros(padded_shape, like.dtype)
    for i in range(kh):
        for j in range(kw):
            g = grad_windows(i, j)
            oh, ow = g.shape[2], g.shape[3]
            grad[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += g
    return grad


class Conv2d(Function):
    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        xp = xp_of(x)
        o, c, kh, kw = weight.shape
        x = pad2d(x, padding)
        n, _, h, w = x.shape
        oh, ow = output_size(h, kh, stride[0], dilation[0]), output_size(w, kw, stride[1], dilation[1])
        if oh <= 0 or ow <= 0:
            raise ValueError(f"conv2d: kernel {(kh, kw)} with dilation {dilation} is larger than the padded input {(h, w)}")
        cols = windows(x, (kh, kw), stride, dilation, (oh, ow)).reshape(n * oh * ow, c * kh * kw)
        out = cols @ weight.reshape(o, -1).T
        if bias is not None:
            out += bias
        self.save_for_backward(cols, weight)
        self.padded_shape, self.padding, self.stride, self.dilation = x.shape, padding, stride, dilation
        return xp.ascontiguousarray(out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))

    def backward(self, g):
        cols, weight = self.saved
        o, c, kh, kw = weight.shape
        n, _, oh, ow = g.shape
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)
        gw = (g2.T @ cols).reshape(weight.shape) if self.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if len(self.needs_input_grad) == 3 and self.needs_input_grad[2] else None
        gx = None
        if self.needs_input_grad[0]:
            xp = xp_of(g)
            gcols = (g2 @ weight.reshape(o, -1)).reshape(n, oh, ow, c, kh, kw)
            gcols = xp.ascontiguousarray(gcols.transpose(4, 5, 0, 3, 1, 2))  # (KH, KW, N, C, OH, OW)
            gx = scatter_windows(lambda i, j: gcols[i, j], g, self.padded_shape, (kh, kw), self.stride, self.dilation)
            gx = unpad2d(gx, self.padding)
        return (gx, gw, gb) if len(self.needs_input_grad) == 3 else (gx, gw)


def _conv_padding(padding, kernel, dilation, stride):
    """Padding as ((top, bottom), (left, right)); 'same' pads as PyTorch (extra on the bottom/right)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("conv2d: padding='same' needs stride 1")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    ph, pw = pair(padding, "padding")
    return (ph, ph), (pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution of an NCHW input with an (out, in, kh, kw) weight, as torch.nn.functional.conv2d.

    ``padding`` is an int, a pair, 'valid' or 'same'. Only ``groups=1`` is supported.
    """
    if groups != 1:
        raise ValueError(f"conv2d: only groups=1 is supported, got groups={groups}")
    if input.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d: expects a 4-d NCHW input and a 4-d weight, got shapes {input.shape} and {weight.shape}")
    if input.shape[1] != weight.shape[1]:
        raise ValueError(
            f"conv2d: input of shape {input.shape} has {input.shape[1]} channels but weight of shape "
            f"{weight.shape} expects {weight.shape[1]} (weight is out_channels x in_channels x kh x kw)"
        )
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = _conv_padding(padding, weight.shape[2:], dilation, stride)
    inputs = (input, weight) if bias is None else (input, weight, bias)
    return Conv2d.apply(*inputs, stride=stride, padding=padding, dilation=dilation)
