"""2-d convolution over channels-last memory: blocked im2col over N*OH*OW rows, one GEMM per block.

The API stays NCHW: the output is an NCHW-shaped view of NHWC memory, which ReLU and pooling
keep (their ops follow the input's strides), so the next convolution reads it without a copy.
An input of few channels (an RGB image) is read in its NCHW form, which is faster there.
"""

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype
from distdl.functional._windows import output_size, pad2d, pair, scatter_windows, unpad2d, window_view

SAMPLES_PER_BLOCK = 4  # one block's columns (a few hundred KB for 3x3x32) stay in cache between copy and GEMM
FEW_CHANNELS = 8  # below this many input channels Conv2dNCHW is faster (measured: 3 channels 15 ms against 26)
FEW_CHANNEL_BLOCK_BYTES = 4 << 20  # its blocks' columns: 40 3x32x32 images (measured 4 samples 8.9 ms fwd+bwd,
                                   # 32 7.8), and a bounded buffer for large images


def channels_last(x, padding):
    """``x`` (N, C, H, W) as padded (N, H, W, C) memory; no copy if it is already stored that way unpadded."""
    xp = xp_of(x)
    nhwc = x.transpose(0, 2, 3, 1)
    (top, bottom), (left, right) = padding
    if top or bottom or left or right:
        return xp.pad(nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return xp.ascontiguousarray(nhwc)


def _windows(x, kernel, stride, dilation, out_hw):
    """Every window of NHWC ``x`` as a (N, OH, OW, KH, KW, C) strided view, without copying."""
    sn, sy, sx, sc = x.strides
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    return xp_of(x).lib.stride_tricks.as_strided(
        x, (x.shape[0], oh, ow, kh, kw, x.shape[3]), (sn, sy * sh, sx * sw, sy * dh, sx * dw, sc))


def _blocks(n):
    return [slice(s, min(s + SAMPLES_PER_BLOCK, n)) for s in range(0, n, SAMPLES_PER_BLOCK)]


def _geometry(size, kernel, stride, dilation):
    """(kernel, stride, dilation, output size) of a convolution over a padded input of ``size``."""
    (h, w), (kh, kw) = size, kernel
    oh, ow = output_size(h, kh, stride[0], dilation[0]), output_size(w, kw, stride[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f"conv2d: kernel {kernel} with dilation {dilation} is larger than the padded input {size}")
    return kernel, stride, dilation, (oh, ow)


class Conv2d(Function):
    """Keeps the padded NHWC input and recomputes each block's columns in backward: no columns stay alive."""

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        xp = xp_of(x)
        o, c, kh, kw = weight.shape
        xh = channels_last(x, padding)
        n, h, w, _ = xh.shape
        self.geometry = _geometry((h, w), (kh, kw), stride, dilation)
        oh, ow = self.geometry[3]
        wmat_t = weight.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)  # rows in the columns' (kh, kw, c) order
        out = xp.empty((n, oh, ow, o), x.dtype)
        windows = _windows(xh, *self.geometry)
        for block in _blocks(n):
            cols = windows[block].reshape(-1, kh * kw * c)
            xp.matmul(cols, wmat_t, out=out[block].reshape(-1, o))
        if bias is not None:
            out += bias
        self.save_for_backward(xh, weight)
        self.padding = padding
        return out.transpose(0, 3, 1, 2)

    def backward(self, g):
        xp = xp_of(g)
        xh, weight = self.saved
        o, c, kh, kw = weight.shape
        (_, _), (sh, sw), (dh, dw), (oh, ow) = self.geometry
        needs = self.needs_input_grad
        gh = g.transpose(0, 2, 3, 1)  # NHWC, a view where g came from a channels-last op
        windows = _windows(xh, *self.geometry)
        gw = xp.zeros((o, kh * kw * c), g.dtype) if needs[1] else None
        gxh = xp.zeros(xh.shape, g.dtype) if needs[0] else None
        gb = xp.zeros(o, g.dtype) if len(needs) == 3 and needs[2] else None
        wmat = weight.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)
        ones = xp.ones(SAMPLES_PER_BLOCK * oh * ow, g.dtype)
        for block in _blocks(g.shape[0]):
            g_block = xp.ascontiguousarray(gh[block]).reshape(-1, o)
            if gb is not None:  # a product with ones: gh.sum over N*OH*OW rows is several times slower
                gb += ones[:g_block.shape[0]] @ g_block
            if gw is not None:
                gw += g_block.T @ windows[block].reshape(-1, kh * kw * c)
            if gxh is not None:
                gcols = (g_block @ wmat).reshape(-1, oh, ow, kh, kw, c)
                target = gxh[block]
                for i in range(kh):
                    for j in range(kw):
                        target[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += \
                            gcols[:, :, :, i, j]
        gx = None
        if gxh is not None:
            (top, bottom), (left, right) = self.padding
            gx = gxh[:, top:gxh.shape[1] - bottom, left:gxh.shape[2] - right].transpose(0, 3, 1, 2)
        if gw is not None:
            gw = xp.ascontiguousarray(gw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))
        if len(needs) == 2:
            return gx, gw
        return gx, gw, gb


def few_channel_block(rows, pixels, itemsize):
    """Samples per block of Conv2dNCHW: as many as fit FEW_CHANNEL_BLOCK_BYTES of columns, at least one."""
    return max(1, FEW_CHANNEL_BLOCK_BYTES // (rows * pixels * itemsize))


class Conv2dNCHW(Function):
    """Few input channels: columns (C*KH*KW, samples*OH*OW) copied from NCHW memory in runs of a row.

    Channels-last windows of 3 channels are copied in runs of 9 values, which costs more than the
    GEMM. With so few rows, a block takes many samples (one GEMM each way per block, K = 27 is too
    thin for small ones), and the bias is one more row of ones in the columns: the forward adds it
    and the backward sums its gradient inside the GEMMs (a separate sum over N*OH*OW rows took
    longer than the weight's GEMM). The output is channels-last as Conv2d's (so what follows stays
    in one layout); columns are recomputed in backward, so none stay alive.
    """

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        xp = xp_of(x)
        o = weight.shape[0]
        x = pad2d(x, padding)
        n, _, h, w = x.shape
        self.geometry = _geometry((h, w), weight.shape[2:], stride, dilation)
        oh, ow = self.geometry[3]
        self.save_for_backward(x, weight)
        self.padding, self.has_bias = padding, bias is not None
        out = xp.empty((n, oh, ow, o), x.dtype)
        wmat_t = weight.reshape(o, -1).T
        if bias is not None:
            wmat_t = xp.concatenate([wmat_t, bias[None]])
        for block, cols in self._column_blocks():
            xp.matmul(cols.T, wmat_t, out=out[block].reshape(-1, o))
        return out.transpose(0, 3, 1, 2)

    def _column_blocks(self):
        """(samples, their columns) per block: rows in (c, kh, kw) order, then a row of ones for the bias."""
        x = self.saved[0]
        (kh, kw), _, _, (oh, ow) = self.geometry
        n, c = x.shape[:2]
        rows = c * kh * kw
        samples = few_channel_block(rows + self.has_bias, oh * ow, x.dtype.itemsize)
        buffer = xp_of(x).empty((rows + self.has_bias) * min(n, samples) * oh * ow, x.dtype)
        for start in range(0, n, samples):
            block = slice(start, min(start + samples, n))
            windows = window_view(x[block], *self.geometry).transpose(1, 2, 3, 0, 4, 5)  # (c, kh, kw, n, oh, ow)
            pixels = windows.shape[3] * oh * ow
            cols = buffer[:(rows + self.has_bias) * pixels].reshape(-1, pixels)  # contiguous, so reshapes are views
            cols[:rows].reshape(windows.shape)[...] = windows
            cols[rows:] = 1
            yield block, cols

    def backward(self, g):
        xp = xp_of(g)
        x, weight = self.saved
        o, c, kh, kw = weight.shape
        n, _, oh, ow = g.shape
        needs = self.needs_input_grad
        gh = g.transpose(0, 2, 3, 1)  # a view where g is channels-last
        gw = gb = None
        if needs[1] or self.has_bias and needs[2]:
            grads = xp.zeros((c * kh * kw + self.has_bias, o), g.dtype)
            for block, cols in self._column_blocks():
                grads += cols @ xp.ascontiguousarray(gh[block]).reshape(-1, o)
            if needs[1]:
                gw = xp.ascontiguousarray(grads[:c * kh * kw].T).reshape(weight.shape)
            if self.has_bias and needs[2]:
                gb = grads[-1].copy()
        gx = None
        if needs[0]:
            gcols = (gh.reshape(n, oh * ow, o) @ weight.reshape(o, -1)).transpose(0, 2, 1).reshape(n, c, kh, kw, oh, ow)
            _, stride, dilation, _ = self.geometry
            gx = unpad2d(scatter_windows(lambda i, j: gcols[:, :, i, j], g, x.shape, (kh, kw), stride, dilation),
                         self.padding)
        if len(needs) == 2:
            return gx, gw
        return gx, gw, gb


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
    op = Conv2dNCHW if input.shape[1] < FEW_CHANNELS else Conv2d
    return op.apply(*inputs, stride=stride, padding=padding, dilation=dilation)
