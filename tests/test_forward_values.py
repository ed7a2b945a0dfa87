"""Forward values against independent NumPy formulas, including extreme inputs."""

import math

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from distdl import nn
from distdl.functional._special import erfc
from references import naive_conv2d, naive_pool

rng = np.random.default_rng(5)


def t(a):
    return dl.tensor(a)


@pytest.mark.parametrize("stride,pad,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 0, 1)])
def test_conv2d_matches_direct_definition(stride, pad, dilation):
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    out = F.conv2d(t(x), t(w), t(b), stride=stride, padding=pad, dilation=dilation)
    np.testing.assert_allclose(out.numpy(), naive_conv2d(x, w, b, stride, pad, dilation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_pooling_matches_direct_definition(k, s, pad):
    x = rng.standard_normal((2, 3, 7, 6))
    np.testing.assert_allclose(F.max_pool2d(t(x), k, s, pad).numpy(), naive_pool(x, k, s, pad, np.max, -np.inf))
    np.testing.assert_allclose(F.avg_pool2d(t(x), k, s, pad).numpy(), naive_pool(x, k, s, pad, np.mean, 0.0))


def test_erfc_and_gelu_to_float64_precision():
    xs = np.concatenate([np.linspace(-7, 7, 2001), [0.0, 1.9999999, 2.0, 1e-8, -30.0, 30.0]])
    np.testing.assert_allclose(erfc(xs), [math.erfc(v) for v in xs], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(F.gelu(t(xs)).numpy(), [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs],
                               rtol=1e-13, atol=1e-15)
    approx = F.gelu(t(xs), approximate="tanh").numpy()
    expected = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs**3)))
    np.testing.assert_allclose(approx, expected, rtol=1e-13)


def test_activations_match_formulas():
    x = rng.standard_normal((4, 5)) * 3
    np.testing.assert_allclose(F.sigmoid(t(x)).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(F.tanh(t(x)).numpy(), np.tanh(x))
    np.testing.assert_allclose(F.relu(t(x)).numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(F.leaky_relu(t(x), 0.2).numpy(), np.where(x > 0, x, 0.2 * x))
    e = np.exp(x)
    np.testing.assert_allclose(F.softmax(t(x), axis=1).numpy(), e / e.sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(F.log_softmax(t(x), axis=0).numpy(), np.log(e / e.sum(0, keepdims=True)), rtol=1e-12)


def test_softmax_and_cross_entropy_of_huge_logits_stay_finite_and_correct():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4 + 1.0, -1e4], [5e3, 5e3, -1e4]], dtype=np.float32)
    probs = F.softmax(t(logits), axis=1).numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], [1, 0, 0])
    np.testing.assert_allclose(probs[1], [1 / (2 + math.e), math.e / (2 + math.e), 1 / (2 + math.e)], rtol=1e-6)
    x = dl.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, np.array([1, 1, 0]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1e4, math.log(2 + math.e) - 1.0, math.log(2.0)], rtol=1e-6)
    loss.sum().backward()
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad[0], [1, -1, 0], atol=1e-6)
    sig = F.sigmoid(t(np.array([-1e4, 1e4], np.float32))).numpy()
    np.testing.assert_array_equal(sig, [0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(t(np.array([-1e4, 1e4])), np.array([1.0, 0.0]), reduction="none")
    np.testing.assert_allclose(bce.numpy(), [1e4, 1e4])


def test_cross_entropy_options_match_formula():
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    nll = -logp[np.arange(6), y]
    np.testing.assert_allclose(F.cross_entropy(t(x), y).item(), nll.mean())
    np.testing.assert_allclose(F.cross_entropy(t(x), y, reduction="sum").item(), nll.sum())
    smooth = 0.9 * nll - 0.1 * logp.mean(1)
    np.testing.assert_allclose(F.cross_entropy(t(x), y, label_smoothing=0.1).item(), smooth.mean())
    y_ignored = y.copy()
    y_ignored[[0, 3]] = -1
    keep = np.array([1, 2, 4, 5])
    np.testing.assert_allclose(F.cross_entropy(t(x), y_ignored, ignore_index=-1).item(), nll[keep].mean())
    q = rng.dirichlet(np.ones(4), 6)
    np.testing.assert_allclose(F.cross_entropy(t(x), q).item(), -(q * logp).sum(1).mean())
    np.testing.assert_allclose(F.nll_loss(t(logp), y).item(), nll.mean())


def test_class_weights_follow_torchs_weighted_mean():
    """torch: l_i = -w[y_i] log p[i, y_i], the mean divides by the sum of w[y_i] over the rows that count."""
    x, y, w = rng.standard_normal((6, 4)), np.array([0, 3, 3, 1, -100, 2]), rng.uniform(0.5, 2.0, 4)
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    keep = y != -100
    rows = np.flatnonzero(keep)
    picked = -w[y[keep]] * logp[rows, y[keep]]
    np.testing.assert_allclose(F.cross_entropy(t(x), y, w).item(), picked.sum() / w[y[keep]].sum())
    np.testing.assert_allclose(nn.CrossEntropyLoss(w, reduction="sum")(t(x), y).item(), picked.sum())
    np.testing.assert_allclose(F.nll_loss(t(logp), y, weight=w).item(), picked.sum() / w[y[keep]].sum())
    none = nn.NLLLoss(w, reduction="none")(t(logp), y).numpy()
    np.testing.assert_allclose(none[keep], picked)
    assert none[~keep] == 0
    eps = 0.2  # smoothing spreads eps/C of each row over the classes, each weighted by its class
    smooth = (1 - eps) * picked - eps / 4 * (logp[rows] * w).sum(1)
    np.testing.assert_allclose(F.cross_entropy(t(x), y, w, label_smoothing=eps).item(), smooth.sum() / w[y[keep]].sum())
    q = rng.dirichlet(np.ones(4), 6)  # class probabilities: weighted, but the mean is over the rows
    np.testing.assert_allclose(F.cross_entropy(t(x), q, w).item(), -(q * w * logp).sum() / 6)
    assert "weight" in nn.CrossEntropyLoss(w).state_dict()  # a buffer, as torch's
    with pytest.raises(ValueError, match=r"one number per class, shape \(4,\)"):
        F.cross_entropy(t(x), y, w[:3])


def test_binary_losses_take_element_and_positive_weights():
    x, bits, w, pw = rng.standard_normal((5, 3)), (rng.random((5, 3)) > 0.5) * 1.0, rng.uniform(0.5, 2, 3), rng.uniform(0.5, 3, 3)
    s = 1 / (1 + np.exp(-x))
    expected = -(pw * bits * np.log(s) + (1 - bits) * np.log(1 - s)) * w
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(t(x), bits, w, pos_weight=pw).item(), expected.mean())
    np.testing.assert_allclose(nn.BCELoss(w, reduction="sum")(t(s), bits).item(),
                               -(w * (bits * np.log(s) + (1 - bits) * np.log(1 - s))).sum())


def test_losses_against_torch_itself():
    torch = pytest.importorskip("torch")
    x, y, w = rng.standard_normal((6, 4)), np.array([0, 3, 3, 1, -100, 2]), rng.uniform(0.5, 2.0, 4)
    for kwargs in ({}, {"label_smoothing": 0.2}, {"reduction": "sum"}, {"reduction": "none", "label_smoothing": 0.1}):
        ours = nn.CrossEntropyLoss(w, **kwargs)(t(x), y).numpy()
        theirs = torch.nn.CrossEntropyLoss(torch.tensor(w), **kwargs)(torch.tensor(x), torch.tensor(y)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    bits = (rng.random((6, 4)) > 0.5).astype(np.float64)
    ours = nn.BCEWithLogitsLoss(w[:1], pos_weight=w)(t(x), bits).item()
    theirs = torch.nn.BCEWithLogitsLoss(torch.tensor(w[:1]), pos_weight=torch.tensor(w))(torch.tensor(x),
                                                                                         torch.tensor(bits)).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_regression_and_binary_losses_match_formulas():
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(F.mse_loss(t(a), t(b)).item(), ((a - b) ** 2).mean())
    np.testing.assert_allclose(F.l1_loss(t(a), t(b), reduction="sum").item(), np.abs(a - b).sum())
    p, y = rng.uniform(0.01, 0.99, (5,)), rng.integers(0, 2, 5).astype(float)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(F.binary_cross_entropy(t(p), y, reduction="none").numpy(), bce)
    z = rng.standard_normal(5) * 4
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(t(z), y).item(),
                               (-(y * np.log(s) + (1 - y) * np.log(1 - s))).mean(), rtol=1e-12)
    # PyTorch clamps log(0) at -100 instead of returning inf
    assert F.binary_cross_entropy(t(np.array([0.0])), np.array([1.0])).item() == 100.0


def test_float32_binary_cross_entropy_is_exact_to_a_few_ulps_at_the_extremes():
    """Its log(1 - p) is a log with Goldberg's correction, not log1p: checked against float64 where it is hard."""
    p = np.array([0, 1e-30, 1e-10, 3e-8, 1e-3, 0.5, 0.999, 1 - 2 ** -24, 1, 1], np.float32)
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
    x = t(p).requires_grad_()
    loss = F.binary_cross_entropy(x, y, reduction="none")
    loss.sum().backward()
    q = p.astype(np.float64)
    with np.errstate(divide="ignore"):
        expected = -(y * np.maximum(np.log(q), -100) + (1 - y) * np.maximum(np.log1p(-q), -100))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=4e-7, atol=1e-45)
    np.testing.assert_allclose(x.grad, (q - y) / np.maximum(q * (1 - q), 1e-12), rtol=4e-7)
    assert loss.numpy()[-2] == 100.0 and loss.numpy()[0] == 100.0  # log(0) clamped, on either side


def test_batch_norm_training_and_running_statistics():
    x = rng.standard_normal((8, 3, 2, 2)) * 2 + 1
    rm, rv = np.zeros(3), np.ones(3)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    out = F.batch_norm(t(x), rm, rv, t(w), t(b), training=True, momentum=0.1, eps=1e-5).numpy()
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    expected = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected * w[None, :, None, None] + b[None, :, None, None], rtol=1e-12)
    np.testing.assert_allclose(rm, 0.1 * mean)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * var * 32 / 31)
    evaluated = F.batch_norm(t(x), rm, rv, training=False).numpy()
    np.testing.assert_allclose(evaluated, (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5))


def test_reductions_shapes_and_ops_match_numpy():
    x = rng.standard_normal((3, 4, 5))
    for axis in (None, 0, -1, (0, 2)):
        for keepdims in (False, True):
            for name in ("sum", "mean", "max", "min", "var"):
                got = getattr(t(x), name)(axis=axis, keepdims=keepdims).numpy()
                np.testing.assert_allclose(got, getattr(np, name)(x, axis=axis, keepdims=keepdims), rtol=1e-12)
    np.testing.assert_allclose(dl.stack([t(x), t(x)], axis=1).numpy(), np.stack([x, x], axis=1))
    np.testing.assert_allclose(F.clip(t(x), -0.5, 0.5).numpy(), np.clip(x, -0.5, 0.5))
    np.testing.assert_allclose((t(x) @ t(x.transpose(0, 2, 1))).numpy(), x @ x.transpose(0, 2, 1))


def test_max_ties_share_the_gradient():
    x = dl.tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5, 0.0])
