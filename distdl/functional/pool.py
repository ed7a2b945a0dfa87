"""Max and average pooling over strided windows, with one vectorised add per kernel position in backward."""

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional.conv import output_size, pad2d, pair, scatter_windows, unpad2d, windows


def _geometry(x_shape, kernel_size, stride, padding, dilation, name):
    kernel = pair(kernel_size, "kernel_size")
    stride = pair(stride if stride is not None else kernel, "stride")
    ph, pw = pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    if len(x_shape) != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW input, got shape {x_shape}")
    if ph * 2 > kernel[0] or pw * 2 > kernel[1]:
        raise ValueError(f"{name}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    out = (output_size(x_shape[2] + 2 * ph, kernel[0], stride[0], dilation[0]),
           output_size(x_shape[3] + 2 * pw, kernel[1], stride[1], dilation[1]))
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"{name}: kernel {kernel} is larger than the padded input {x_shape[2:]}")
    return kernel, stride, ((ph, ph), (pw, pw)), dilation, out


class MaxPool2d(Function):
    def forward(self, x, kernel, stride, padding, dilation, out_hw):
        xp = xp_of(x)
        fill = -xp.inf if x.dtype.kind == "f" else xp.iinfo(x.dtype).min
        padded = pad2d(x, padding, value=fill)
        n, c = x.shape[:2]
        win = windows(padded, kernel, stride, dilation, out_hw, order="nchw").reshape(n, c, *out_hw, -1)
        self.argmax = win.argmax(axis=-1)
        self.geometry = padded.shape, kernel, stride, dilation, padding
        return xp.take_along_axis(win, self.argmax[..., None], axis=-1)[..., 0]

    def backward(self, g):
        padded_shape, kernel, stride, dilation, padding = self.geometry
        xp, zero, kw = xp_of(g), g.dtype.type(0), kernel[1]
        grad = scatter_windows(lambda i, j: xp.where(self.argmax == i * kw + j, g, zero),
                               g, padded_shape, kernel, stride, dilation)
        return unpad2d(grad, padding)


class AvgPool2d(Function):
    def forward(self, x, kernel, stride, padding, out_hw, count_include_pad):
        padded = pad2d(x, padding)
        ones = (1, 1)
        total = windows(padded, kernel, stride, ones, out_hw, order="nchw").sum(axis=(-2, -1))
        if count_include_pad or padding == ((0, 0), (0, 0)):
            divisor = x.dtype.type(kernel[0] * kernel[1])
        else:  # count only the real pixels in each window
            xp = xp_of(x)
            mask = pad2d(xp.ones((1, 1) + x.shape[2:], x.dtype), padding)
            divisor = windows(mask, kernel, stride, ones, out_hw, order="nchw").sum(axis=(-2, -1))
        self.divisor = divisor
        self.geometry = padded.shape, kernel, stride, padding
        return total / divisor

    def backward(self, g):
        padded_shape, kernel, stride, padding = self.geometry
        share = g / self.divisor
        grad = scatter_windows(lambda i, j: share, g, padded_shape, kernel, stride, (1, 1))
        return unpad2d(grad, padding)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1):
    """Max over each window (stride defaults to the kernel size), as torch.nn.functional.max_pool2d."""
    kernel, stride, padding, dilation, out = _geometry(input.shape, kernel_size, stride, padding, dilation, "max_pool2d")
    return MaxPool2d.apply(input, kernel=kernel, stride=stride, padding=padding, dilation=dilation, out_hw=out)


def avg_pool2d(input, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over each window, as torch.nn.functional.avg_pool2d."""
    kernel, stride, padding, _, out = _geometry(input.shape, kernel_size, stride, padding, 1, "avg_pool2d")
    return AvgPool2d.apply(input, kernel=kernel, stride=stride, padding=padding, out_hw=out,
                           count_include_pad=count_include_pad)
