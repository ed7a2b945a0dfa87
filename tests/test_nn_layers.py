"""Each layer: output against an independent NumPy computation, gradients by finite differences (float64)."""

import math

import numpy as np
import pytest

import distdl as dl
from distdl import nn
from gradcheck import module_gradcheck
from references import naive_conv2d, naive_pool

rng = np.random.default_rng(7)
pytestmark = pytest.mark.usefixtures("float64")


def forward(layer, x):
    return layer(dl.tensor(x)).numpy()


def test_linear():
    layer = nn.Linear(5, 3)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(forward(layer, x), x @ layer.weight.data.T + layer.bias.data)
    module_gradcheck(layer, x)
    assert nn.Linear(5, 3, bias=False).bias is None


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv2d(stride, padding, dilation):
    layer = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, dilation=dilation)
    x = rng.standard_normal((2, 2, 7, 6))
    expected = naive_conv2d(x, layer.weight.data, layer.bias.data, stride, padding, dilation)
    np.testing.assert_allclose(forward(layer, x), expected, atol=1e-12)
    module_gradcheck(layer, x)


def test_pooling_layers():
    x = rng.permutation(np.linspace(-1, 1, 2 * 2 * 6 * 6)).reshape(2, 2, 6, 6)
    np.testing.assert_allclose(forward(nn.MaxPool2d(2), x), naive_pool(x, 2, 2, 0, np.max, -np.inf))
    np.testing.assert_allclose(forward(nn.AvgPool2d(3, stride=1), x), naive_pool(x, 3, 1, 0, np.mean, 0.0))
    module_gradcheck(nn.MaxPool2d(3, stride=2), x)
    module_gradcheck(nn.AvgPool2d(2), x)


def torch_pool_formula(x, k, s, p, ceil_mode, reduce, count_include_pad=True):
    """Pooling as torch's CPU kernels define it: window [i*s - p, min(i*s - p + k, H + p)), clamped to the input."""
    n, c, h, w = x.shape

    def size(length):
        span = length + 2 * p - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        return out - 1 if ceil_mode and (out - 1) * s >= length + p else out

    out = np.zeros((n, c, size(h), size(w)))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
            area = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            window = x[:, :, h0:h1, w0:w1]
            if reduce == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            elif reduce == "sum":
                out[:, :, i, j] = window.sum(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / (area if count_include_pad else window[0, 0].size)
    return out


@pytest.mark.parametrize("shape, k, s, p", [((6, 6), 2, 2, 0), ((5, 7), 3, 2, 1), ((5, 5), 2, 2, 0), ((6, 5), 3, 2, 0),
                                            ((7, 7), 3, 3, 1), ((6, 6), 3, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pooling_ceil_mode_and_padding_match_torchs_formula(shape, k, s, p, ceil_mode):
    x = rng.standard_normal((2, 3) + shape)
    np.testing.assert_allclose(forward(nn.MaxPool2d(k, s, p, 1, False, ceil_mode), x),
                               torch_pool_formula(x, k, s, p, ceil_mode, "max"))
    for include in (True, False):
        # positional order as torch's: kernel_size, stride, padding, ceil_mode, count_include_pad
        np.testing.assert_allclose(forward(nn.AvgPool2d(k, s, p, ceil_mode, include), x),
                                   torch_pool_formula(x, k, s, p, ceil_mode, "avg", include), rtol=1e-12)
    np.testing.assert_allclose(forward(nn.AvgPool2d(k, s, p, ceil_mode, True, 5), x),
                               torch_pool_formula(x, k, s, p, ceil_mode, "sum") / 5, rtol=1e-12)


def test_pooling_against_torch_itself():
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 7, 6))
    for args in [(3, 2, 1, True), (2, 2, 0, True), (3, 2, 1, False, False), (3, 1, 1, True, False, 4)]:
        np.testing.assert_allclose(forward(nn.AvgPool2d(*args), x),
                                   torch.nn.AvgPool2d(*args)(torch.tensor(x)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(forward(nn.MaxPool2d(3, 2, 1, ceil_mode=True), x),
                               torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(torch.tensor(x)).numpy())


def test_max_pool_return_indices_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="return_indices"):
        nn.MaxPool2d(2, return_indices=True)


@pytest.mark.parametrize("size,out", [((6, 6), 3), ((7, 5), (3, 2)), ((5, 5), (None, 1)), ((4, 4), 1)])
def test_adaptive_avg_pool2d(size, out):
    x = rng.standard_normal((2, 3) + size)
    oh, ow = (out, out) if isinstance(out, int) else out
    oh, ow = oh or size[0], ow or size[1]
    expected = np.zeros((2, 3, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(math.floor(i * size[0] / oh), math.ceil((i + 1) * size[0] / oh))
            cols = slice(math.floor(j * size[1] / ow), math.ceil((j + 1) * size[1] / ow))
            expected[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    np.testing.assert_allclose(forward(nn.AdaptiveAvgPool2d(out), x), expected, atol=1e-12)
    module_gradcheck(nn.AdaptiveAvgPool2d(out), x)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm1d, (4, 3, 5)), (nn.BatchNorm2d, (3, 3, 4, 2))])
def test_batch_norm_training_and_eval(cls, shape):
    layer = cls(3)
    layer.weight.data[:] = rng.uniform(0.5, 2, 3)
    layer.bias.data[:] = rng.standard_normal(3)
    x = rng.standard_normal(shape) * 2 + 1
    axes = (0,) + tuple(range(2, len(shape)))
    view = (1, 3) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    expected = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-5) * layer.weight.data.reshape(view)
    np.testing.assert_allclose(forward(layer, x), expected + layer.bias.data.reshape(view), atol=1e-12)
    count = x.size // 3
    np.testing.assert_allclose(layer.running_mean.data, 0.1 * mean)
    np.testing.assert_allclose(layer.running_var.data, 0.9 + 0.1 * var * count / (count - 1))
    assert int(layer.num_batches_tracked.data) == 1
    module_gradcheck(layer, x)
    layer.eval()
    rm, rv = layer.running_mean.data.copy(), layer.running_var.data.copy()
    expected = (x - rm.reshape(view)) / np.sqrt(rv.reshape(view) + 1e-5) * layer.weight.data.reshape(view)
    np.testing.assert_allclose(forward(layer, x), expected + layer.bias.data.reshape(view), atol=1e-12)
    np.testing.assert_array_equal(layer.running_mean.data, rm)  # evaluation leaves the statistics alone
    module_gradcheck(layer, x)


def test_batch_norm_cumulative_average_and_no_tracking():
    layer = nn.BatchNorm1d(2, momentum=None)
    batches = [rng.standard_normal((5, 2)) + k for k in range(3)]
    for x in batches:
        forward(layer, x)
    np.testing.assert_allclose(layer.running_mean.data, np.mean([b.mean(axis=0) for b in batches], axis=0))
    untracked = nn.BatchNorm1d(2, track_running_stats=False, affine=False).eval()
    assert untracked.running_mean is None and list(untracked.parameters()) == []
    x = batches[0]
    np.testing.assert_allclose(forward(untracked, x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), atol=1e-12)


@pytest.mark.parametrize("shape,normalized", [((4, 6), 6), ((2, 3, 4), (3, 4))])
def test_layer_norm(shape, normalized):
    layer = nn.LayerNorm(normalized)
    layer.weight.data[...] = rng.uniform(0.5, 2, layer.weight.shape)
    layer.bias.data[...] = rng.standard_normal(layer.bias.shape)
    x = rng.standard_normal(shape)
    axes = tuple(range(len(shape) - layer.weight.ndim, len(shape)))
    xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(forward(layer, x), xhat * layer.weight.data + layer.bias.data, atol=1e-12)
    module_gradcheck(layer, x)
    module_gradcheck(nn.LayerNorm(normalized, elementwise_affine=False), x)


def test_embedding_with_padding():
    layer = nn.Embedding(6, 3, padding_idx=0)
    np.testing.assert_array_equal(layer.weight.data[0], 0)
    tokens = np.array([[1, 0, 3], [3, 5, 0]])
    out = layer(dl.tensor(tokens))
    np.testing.assert_array_equal(out.numpy(), layer.weight.data[tokens])
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    expected = np.zeros((6, 3))
    for index, row in zip(tokens.ravel(), upstream.reshape(-1, 3)):
        expected[index] += row  # a repeated index sums its gradients
    expected[0] = 0  # the padding row is never trained, as in torch
    np.testing.assert_allclose(layer.weight.grad, expected)


def test_dropout_train_and_eval():
    dl.seed(3)
    layer = nn.Dropout(0.25)
    x = np.ones((200, 100))
    out = forward(layer, x)
    assert set(np.unique(out)) == {0.0, 1 / 0.75}
    assert abs((out == 0).mean() - 0.25) < 0.01
    np.testing.assert_array_equal(forward(layer.eval(), x), x)
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout(1.5)


ACTIVATIONS = [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (nn.Tanh(), np.tanh),
    (nn.GELU(), lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
    (nn.GELU("tanh"), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    (nn.Softmax(axis=1), lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    (nn.LogSoftmax(axis=1), lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))),
    (nn.Flatten(), lambda x: x.reshape(len(x), -1)),
    (nn.Identity(), lambda x: x),
]


@pytest.mark.parametrize("layer,reference", ACTIVATIONS, ids=lambda v: repr(v) if isinstance(v, nn.Module) else "")
def test_activation_layers(layer, reference):
    x = rng.choice([-1.0, 1.0], size=(3, 4, 2)) * rng.uniform(0.2, 1.5, size=(3, 4, 2))
    np.testing.assert_allclose(forward(layer, x), reference(x), atol=1e-12)
    module_gradcheck(layer, x)


def test_sequential_and_module_list():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = rng.standard_normal((3, 4))
    w1, b1, w2, b2 = (p.data for p in model.parameters())
    np.testing.assert_allclose(forward(model, x), np.tanh(x @ w1.T + b1) @ w2.T + b2)
    module_gradcheck(model, x)
    assert len(model) == 3 and isinstance(model[1], nn.Tanh) and isinstance(model[1:], nn.Sequential)
    blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    blocks.append(nn.ReLU())
    assert len(blocks) == 4 and [n for n, _ in blocks.named_parameters()][:2] == ["0.weight", "0.bias"]


LOSSES = [
    (nn.MSELoss(), lambda p, t: ((p - t) ** 2).mean(), "real"),
    (nn.L1Loss(reduction="sum"), lambda p, t: np.abs(p - t).sum(), "real"),
    (nn.BCELoss(), lambda p, t: -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(), "prob"),
    (nn.BCEWithLogitsLoss(), lambda z, t: -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z)))).mean(), "real"),
]


@pytest.mark.parametrize("loss,reference,kind", LOSSES, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_pointwise_loss_modules(loss, reference, kind):
    p = rng.uniform(0.1, 0.9, (4, 3)) if kind == "prob" else rng.standard_normal((4, 3))
    t = rng.integers(0, 2, (4, 3)).astype(np.float64)
    np.testing.assert_allclose(loss(dl.tensor(p), dl.tensor(t)).item(), reference(p, t))


def test_class_loss_modules():
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 3, 1, 1, 2])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(5), target].mean()
    assert np.isclose(nn.CrossEntropyLoss()(dl.tensor(logits), target).item(), expected)
    assert np.isclose(nn.NLLLoss()(dl.tensor(log_probs), target).item(), expected)
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1)(dl.tensor(logits), target).item()
    assert np.isclose(smoothed, 0.9 * expected - 0.1 * log_probs.mean(axis=1).mean())


@pytest.mark.parametrize("layer,shape,message", [
    (nn.Linear(5, 3), (4, 6), r"Linear\(in_features=5, out_features=3, bias=True\): expected .*5 features.*\(4, 6\)"),
    (nn.Conv2d(3, 8, 3), (2, 4, 8, 8), r"Conv2d\(3, 8.*expected a 4-d input with 3 channels.*\(2, 4, 8, 8\)"),
    (nn.Conv2d(3, 8, 3), (3, 8, 8), r"Conv2d.*4-d.*\(3, 8, 8\)"),
    (nn.BatchNorm2d(4), (2, 3, 5, 5), r"BatchNorm2d\(4.*4 features.*\(2, 3, 5, 5\)"),
    (nn.BatchNorm1d(4), (2, 5), r"BatchNorm1d\(4.*\(2, 5\)"),
    (nn.LSTM(8, 16), (5, 2, 7), r"LSTM\(8, 16\): expected a 3-d input with 8 features in axis 2.*\(5, 2, 7\)"),
    (nn.GRU(8, 16), (5, 8), r"GRU.*3-d.*\(5, 8\)"),
    (nn.LayerNorm(6), (2, 5), r"layer_norm.*\(2, 5\).*\(6,\)"),
])
def test_wrong_input_names_layer_and_shapes(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer(dl.tensor(np.zeros(shape)))


def test_default_initialisation_follows_torch():
    """Bounds of torch's defaults: U(+-1/sqrt(fan_in)) for Linear/Conv, U(+-1/sqrt(hidden)) for RNNs, N(0,1) Embedding."""
    dl.seed(1)
    linear = nn.Linear(400, 300)
    assert np.abs(linear.weight.data).max() <= 1 / 20 and np.abs(linear.weight.data).max() > 0.049
    assert np.abs(linear.bias.data).max() <= 1 / 20
    conv = nn.Conv2d(16, 32, 5)
    assert np.abs(conv.weight.data).max() <= 1 / math.sqrt(16 * 25)
    assert abs(conv.weight.data.std() - 1 / math.sqrt(3 * 16 * 25)) < 0.002  # uniform std = bound / sqrt(3)
    lstm = nn.LSTM(10, 64)
    assert all(np.abs(p.data).max() <= 1 / 8 for p in lstm.parameters())
    emb = nn.Embedding(1000, 50)
    assert abs(emb.weight.data.std() - 1) < 0.02 and abs(emb.weight.data.mean()) < 0.02
    bn = nn.BatchNorm2d(3)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all() and (bn.running_var.data == 1).all()


def test_batch_norm_without_bias_as_torch():
    x = rng.standard_normal((6, 3))
    layer = nn.BatchNorm1d(3, bias=False)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    np.testing.assert_allclose(forward(layer, x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), atol=1e-12)
