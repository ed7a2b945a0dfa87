"""Max and average pooling over strided window views, with one vectorised step per kernel position in backward."""

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional.linalg import matmul
from distdl.functional._windows import (empty_in_layout, output_size, pad2d, pair, scatter_windows, unpad2d,
                                       window_view)
from distdl.value_checks import readable


def _ceil_output_size(size, kernel, stride, dilation, pad):
    """torch's ceil_mode: one more window for a partial one, unless it would start in the right padding."""
    out = -(-(size + 2 * pad - dilation * (kernel - 1) - 1) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, name):
    """Kernel, stride, padding ((top, bottom), (left, right)), dilation and output size of a pooling.

    With ``ceil_mode`` the bottom and right padding grow so that the last, partial window fits.
    """
    kernel = pair(kernel_size, "kernel_size")
    stride = pair(stride if stride is not None else kernel, "stride")
    pads = pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    if len(x_shape) != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW input, got shape {x_shape}")
    if pads[0] * 2 > kernel[0] or pads[1] * 2 > kernel[1]:
        raise ValueError(f"{name}: padding {pads} must be at most half the kernel size {kernel}")
    size = _ceil_output_size if ceil_mode else lambda n, k, s, d, p: output_size(n + 2 * p, k, s, d)
    out = tuple(size(n, k, s, d, p) for n, k, s, d, p in zip(x_shape[2:], kernel, stride, dilation, pads))
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"{name}: kernel {kernel} is larger than the padded input {x_shape[2:]}")
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
             for o, s, d, k, n, p in zip(out, stride, dilation, kernel, x_shape[2:], pads)]
    return kernel, stride, tuple((p, p + e) for p, e in zip(pads, extra)), dilation, out


class MaxPool2d(Function):
    """Each window's gradient goes to its first maximum (in row-major order), as in PyTorch."""

    def forward(self, x, kernel, stride, padding, dilation, out_hw):
        xp = xp_of(x)
        fill = -xp.inf if x.dtype.kind == "f" else xp.iinfo(x.dtype).min
        padded = pad2d(x, padding, value=fill)
        view = window_view(padded, kernel, stride, dilation, out_hw)
        out = xp.copy(view[:, :, 0, 0])  # order "K": channels-last input, channels-last output
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                if i or j:
                    xp.maximum(out, view[:, :, i, j], out=out)
        self.view, self.out = view, out
        self.geometry = padded.shape, kernel, stride, dilation, padding
        return out

    def backward(self, g):
        padded_shape, kernel, stride, dilation, padding = self.geometry
        xp, last = xp_of(g), (kernel[0] - 1, kernel[1] - 1)
        unclaimed = xp.ones(self.out.shape, dtype=bool)  # windows whose maximum is not found yet

        def first_max(i, j):  # asked in row-major order, so the first maximum claims the gradient
            if (i, j) == last:
                return unclaimed
            first = self.view[:, :, i, j] == self.out
            first &= unclaimed
            xp.logical_xor(unclaimed, first, out=unclaimed)
            return first

        if all(s >= d * (k - 1) + 1 for s, k, d in zip(stride, kernel, dilation)):
            # Windows do not overlap (the usual stride == kernel): write each position's
            # gradient straight into its place, with no temporary and no read-modify-write.
            grad = empty_in_layout(padded_shape, g.dtype, self.view)
            (oh, ow), (kh, kw) = g.shape[2:], kernel
            if stride == kernel and dilation == (1, 1):  # the windows tile the input: zero only what they miss
                grad[:, :, oh * kh:] = 0
                grad[:, :, :, ow * kw:] = 0
            else:
                grad[...] = 0
            grad_windows = window_view(grad, kernel, stride, dilation, (oh, ow))
            hits = self.view == self.out[:, :, None, None]  # one compare for all positions
            xp.multiply(g[:, :, None, None], hits, out=grad_windows)
            if not readable(hits) or xp.count_nonzero(hits) != hits.size // (kernel[0] * kernel[1]):
                # a window with a tie (or a NaN) has not exactly one maximum: its first one takes it all (on a
                # device always done: counting the maxima would be a read, a wait for the device)
                for i in range(kernel[0]):
                    for j in range(kernel[1]):
                        xp.multiply(g, first_max(i, j), out=grad_windows[:, :, i, j])
        else:
            grad = scatter_windows(lambda i, j: g * first_max(i, j).astype(g.dtype),  # a float mask multiplies faster
                                   g, padded_shape, kernel, stride, dilation)
        return unpad2d(grad, padding)


class AvgPool2d(Function):
    def forward(self, x, kernel, stride, padding, out_hw, count_include_pad, divisor_override):
        padded = pad2d(x, padding)
        ones = (1, 1)
        total = window_view(padded, kernel, stride, ones, out_hw).sum(axis=(2, 3))
        (top, bottom), (left, right) = padding
        overhang = bottom != top or right != left  # ceil_mode's partial windows
        if divisor_override:
            divisor = x.dtype.type(divisor_override)
        elif not overhang and (count_include_pad or not (top or left)):
            divisor = x.dtype.type(kernel[0] * kernel[1])
        else:  # count the pixels each window covers: real ones, and padding if asked, never the overhang
            xp = xp_of(x)
            mask = xp.ones((1, 1) + x.shape[2:], x.dtype)
            if count_include_pad:
                mask = pad2d(mask, ((top, top), (left, left)), value=1)
                mask = pad2d(mask, ((0, bottom - top), (0, right - left)))
            else:
                mask = pad2d(mask, padding)
            divisor = window_view(mask, kernel, stride, ones, out_hw).sum(axis=(2, 3))
        self.divisor = divisor
        self.geometry = padded.shape, kernel, stride, padding
        return total / divisor

    def backward(self, g):
        padded_shape, kernel, stride, padding = self.geometry
        share = g / self.divisor
        return unpad2d(scatter_windows(lambda i, j: share, g, padded_shape, kernel, stride, (1, 1)), padding)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over each window (stride defaults to the kernel size), as torch.nn.functional.max_pool2d."""
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True (for max_unpool2d) is not supported")
    kernel, stride, padding, dilation, out = _geometry(input.shape, kernel_size, stride, padding, dilation, ceil_mode,
                                                       "max_pool2d")
    return MaxPool2d.apply(input, kernel=kernel, stride=stride, padding=padding, dilation=dilation, out_hw=out)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over each window, as torch.nn.functional.avg_pool2d (same arguments, same order)."""
    kernel, stride, padding, _, out = _geometry(input.shape, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    if divisor_override is not None and divisor_override <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be a positive number, got {divisor_override}")
    return AvgPool2d.apply(input, kernel=kernel, stride=stride, padding=padding, out_hw=out,
                           count_include_pad=count_include_pad, divisor_override=divisor_override)


def _averaging_matrix(size, out_size, dtype, xp):
    """(out_size, size) rows averaging the bins torch's adaptive pooling uses: [floor(i*s/o), ceil((i+1)*s/o))."""
    matrix = xp.zeros((out_size, size), dtype)
    for i in range(out_size):
        start, stop = (i * size) // out_size, -((-(i + 1) * size) // out_size)
        matrix[i, start:stop] = 1 / (stop - start)
    return matrix


def adaptive_avg_pool2d(input, output_size):
    """Average into an ``output_size`` grid whatever the input size: two small matmuls, A_h @ x @ A_w.T."""
    if input.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: expects NCHW input, got shape {input.shape}")
    h, w = input.shape[2:]
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    out_h, out_w = h if out_h is None else out_h, w if out_w is None else out_w  # None keeps that axis, as torch
    xp = xp_of(input.data)
    rows = Tensor._from_op(_averaging_matrix(h, out_h, input.dtype, xp), None, 0)
    cols = Tensor._from_op(_averaging_matrix(w, out_w, input.dtype, xp).T, None, 0)
    return matmul(matmul(rows, input), cols)
