"""2-d convolution as im2col + GEMM per sample: no Python loop over pixels, one batched matmul."""

from distdl.autograd.function import Function
from distdl.functional._util import check_same_dtype
from distdl.functional._windows import output_size, pad2d, pair, scatter_windows, unpad2d, window_view


class Conv2d(Function):
    """Columns are laid out (N, C*KH*KW, OH*OW), so ``W @ cols`` is already NCHW: no transposes."""

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        o, c, kh, kw = weight.shape
        x = pad2d(x, padding)
        n, _, h, w = x.shape
        oh, ow = output_size(h, kh, stride[0], dilation[0]), output_size(w, kw, stride[1], dilation[1])
        if oh <= 0 or ow <= 0:
            raise ValueError(f"conv2d: kernel {(kh, kw)} with dilation {dilation} is larger than the padded input {(h, w)}")
        cols = window_view(x, (kh, kw), stride, dilation, (oh, ow)).reshape(n, c * kh * kw, oh * ow)
        out = weight.reshape(o, -1) @ cols
        if bias is not None:
            out += bias[:, None]
        self.save_for_backward(cols, weight)
        self.padded_shape, self.padding, self.stride, self.dilation = x.shape, padding, stride, dilation
        return out.reshape(n, o, oh, ow)

    def backward(self, g):
        cols, weight = self.saved
        o, c, kh, kw = weight.shape
        n, _, oh, ow = g.shape
        g3 = g.reshape(n, o, oh * ow)
        gw = (g3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape) if self.needs_input_grad[1] else None
        gb = g3.sum(axis=(0, 2)) if len(self.needs_input_grad) == 3 and self.needs_input_grad[2] else None
        gx = None
        if self.needs_input_grad[0]:
            gcols = (weight.reshape(o, -1).T @ g3).reshape(n, c, kh, kw, oh, ow)
            gx = scatter_windows(lambda i, j: gcols[:, :, i, j], g, self.padded_shape, (kh, kw), self.stride, self.dilation)
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
    check_same_dtype("conv2d", input, weight)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = _conv_padding(padding, weight.shape[2:], dilation, stride)
    inputs = (input, weight) if bias is None else (input, weight, bias)
    return Conv2d.apply(*inputs, stride=stride, padding=padding, dilation=dilation)
