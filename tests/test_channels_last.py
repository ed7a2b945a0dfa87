"""Channels-last memory behind the NCHW API: conv, ReLU and max-pooling keep it and answer as the definitions."""

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from distdl import nn
from distdl.functional.conv import FEW_CHANNELS, few_channel_block
from gradcheck import gradcheck
from references import naive_conv2d


def nchw(a):
    return np.ascontiguousarray(a)


def nhwc(a):
    """The same NCHW array stored channels-last, as a convolution's output is."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def is_channels_last(a):
    return a.strides[1] == a.itemsize


@pytest.mark.parametrize("layout", [nchw, nhwc])
@pytest.mark.parametrize("channels", [3, FEW_CHANNELS])  # columns from NCHW for few channels, else channels-last
@pytest.mark.parametrize("stride,pad,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv2d_matches_the_direct_definition_on_either_layout(layout, channels, stride, pad, dilation):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((6, channels, 7, 8)), rng.standard_normal((4, channels, 3, 3)), rng.standard_normal(4)
    out = F.conv2d(dl.tensor(layout(x)), dl.tensor(w), dl.tensor(b), stride, pad, dilation)  # 6 samples: blocks 4 + 2
    np.testing.assert_allclose(out.numpy(), naive_conv2d(x, w, b, stride, pad, dilation), rtol=1e-12, atol=1e-12)
    assert is_channels_last(out.data)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, pad, dilation), layout(x), w, b)


@pytest.mark.parametrize("bias", [True, False])
def test_few_channel_conv2d_over_several_blocks_sums_what_each_part_of_the_batch_gives(bias):
    """Two blocks (the last one partial): values as the definition, gradients the sum of the gradients
    of two halves of the batch (each within one block, as the gradcheck above)."""
    rng = np.random.default_rng(3)
    n = few_channel_block(3 * 3 * 3 + bias, 3 * 4, 8) + 3  # float64 columns of 3x5x6 images, 3x4 outputs
    x, w, b = rng.standard_normal((n, 3, 5, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    g = rng.standard_normal((n, 4, 3, 4))

    def grads(rows):
        params = [dl.tensor(w, requires_grad=True)] + ([dl.tensor(b, requires_grad=True)] if bias else [])
        xt = dl.tensor(x[rows], requires_grad=True)
        out = F.conv2d(xt, *params)
        out.backward(g[rows])
        return out.numpy(), [xt.grad] + [p.grad for p in params]

    out, whole = grads(slice(None))
    np.testing.assert_allclose(out, naive_conv2d(x, w, b if bias else np.zeros(4), 1, 0, 1), rtol=1e-12, atol=1e-12)
    halves = [grads(slice(None, n // 2))[1], grads(slice(n // 2, None))[1]]
    np.testing.assert_allclose(whole[0], np.concatenate([halves[0][0], halves[1][0]]), rtol=1e-12, atol=1e-12)
    for got, first, second in zip(whole[1:], halves[0][1:], halves[1][1:]):
        np.testing.assert_allclose(got, first + second, rtol=1e-12, atol=1e-12)


def first_max_gradient(x, k, g):
    """Each k x k window's gradient to its first maximum in row-major order, as torch: a loop over windows."""
    grad = np.zeros_like(x)
    for n, c, i, j in np.ndindex(g.shape):
        window = x[n, c, i * k:(i + 1) * k, j * k:(j + 1) * k]
        a, b = np.unravel_index(np.argmax(window), window.shape)  # argmax returns the first maximum
        grad[n, c, i * k + a, j * k + b] += g[n, c, i, j]
    return grad


@pytest.mark.parametrize("layout", [nchw, nhwc])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gives_each_window_gradient_to_its_first_maximum(layout, ties):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 6, 8))
    if ties:  # ReLU's zeros, and a window of equal positive values
        x = np.maximum(x, 0)
        x[0, 0, :2, :2] = 0.5
    t = dl.tensor(layout(x), requires_grad=True)
    out = F.max_pool2d(t, 2)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_array_equal(t.grad, first_max_gradient(x, 2, g))
    assert is_channels_last(out.data) == (layout is nhwc)


def test_sequential_runs_relu_then_max_pool_pool_first_with_the_same_values_and_gradients():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6))
    x[:, :, :2, :2] = -np.abs(x[:, :, :2, :2])  # windows with no positive value
    x[0, 0, 2:4, 2:4] = 0.0  # and one of zeros
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()).to(np.float64)
    fused, plain = dl.tensor(x, requires_grad=True), dl.tensor(x, requires_grad=True)
    out = model(fused)
    expected = F.flatten(F.max_pool2d(F.relu(plain), 2), 1)
    assert type(out._ctx.inputs[0]._ctx).__name__ == "ReLU"  # the pool ran first
    g = rng.standard_normal(out.shape)
    out.backward(g)
    expected.backward(g)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    np.testing.assert_array_equal(fused.grad, plain.grad)
