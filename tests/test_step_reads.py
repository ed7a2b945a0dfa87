"""No hidden device-to-host read inside a step: on an asynchronous device the input checks are queued and read
once (value_checks.verify), and the ops that read values on the host (a mask's count, a total) keep them on the
device. The simulated device stands in for a GPU: NumPy arrays, but asynchronous, so these paths run in CI.
On the host every check still raises at once, with the same message (test_errors.py)."""

import math

import numpy as np
import pytest

import distdl as dl
from distdl import device, value_checks
from distdl import functional as F
from distdl.functional._special import erfc
from distdl.functional.norm import batch_statistics


@pytest.fixture
def sim(monkeypatch):
    """Bind this process to the simulated asynchronous device for one test."""
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    yield
    try:
        value_checks.verify()  # nothing left over for the next test
    except Exception:
        pass


def host_message(fn):
    """The error the host raises at once for ``fn()`` (the reference the deferred check must equal)."""
    with pytest.raises(Exception) as caught:
        fn()
    return type(caught.value), str(caught.value)


def t(*shape, requires_grad=False):
    return dl.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32), requires_grad=requires_grad)


BAD_INPUTS = {
    "label": lambda: F.cross_entropy(t(4, 3), np.array([0, 1, 2, 7])),
    "label beside ignored": lambda: F.nll_loss(t(4, 3), np.array([-100, 5, 2, 1])),
    "index": lambda: F.embedding(np.array([0, 9]), t(5, 2)),
    "probability": lambda: F.binary_cross_entropy(dl.tensor(np.array([0.5, 1.5], np.float32)),
                                                  np.array([1.0, 0.0], np.float32)),
    "sync batchnorm count": lambda: batch_statistics(np.ones((1, 3), np.float32), reduce=lambda array: None),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the bad inputs' arithmetic on the simulated device
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_on_a_device_raises_the_host_error_at_the_step_check(name, sim, monkeypatch):
    monkeypatch.setattr(device, "_bound", None)
    expected = host_message(BAD_INPUTS[name])
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    BAD_INPUTS[name]()  # no read, so no error yet
    assert value_checks.pending_count() >= 1
    assert host_message(value_checks.verify) == expected
    assert value_checks.pending_count() == 0


def test_the_next_read_of_a_value_raises_the_queued_error(sim):
    loss = F.cross_entropy(t(4, 3, requires_grad=True), np.array([0, 1, 2, 7]))
    with pytest.raises(IndexError, match=r"\[0, 3\), got values from 0 to 7"):
        loss.item()
    F.embedding(np.array([0, 9]), t(5, 2))
    with pytest.raises(IndexError, match=r"\[0, 5\).*from 0 to 9"):
        loss.numpy()
    F.embedding(np.array([0, 9]), t(5, 2))
    with pytest.raises(IndexError, match=r"\[0, 5\).*from 0 to 9"):
        bool(loss > 0)  # an `if loss > limit:` reads the device too


def test_good_inputs_pass_the_step_check(sim):
    F.cross_entropy(t(4, 3), np.array([0, 1, 2, -100]))
    F.embedding(np.array([[0, 4]]), t(5, 2))
    assert value_checks.pending_count() == 2
    value_checks.verify()
    assert value_checks.pending_count() == 0


def test_checks_are_read_before_the_queue_grows_without_bound(sim):
    for _ in range(value_checks.MAX_PENDING):
        F.embedding(np.array([0]), t(5, 2))
    assert value_checks.pending_count() == value_checks.MAX_PENDING
    F.embedding(np.array([0]), t(5, 2))
    assert value_checks.pending_count() == 0


def loss_and_gradient(targets, **options):
    logits = t(5, 4, requires_grad=True)
    loss = F.cross_entropy(logits, targets, **options)
    loss.backward()
    return loss.data, logits.grad


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # every row ignored: NaN, on both
@pytest.mark.parametrize("options", [{}, {"weight": np.array([1.0, 2.0, 0.5, 1.0], np.float32)},
                                     {"label_smoothing": 0.1, "reduction": "sum"}])
@pytest.mark.parametrize("targets", [[0, 1, 2, 3, 1], [0, -100, 2, -100, 1], [-100] * 5])
def test_cross_entropy_on_a_device_equals_the_host(targets, options, monkeypatch):
    host = loss_and_gradient(np.array(targets), **options)
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    simulated = loss_and_gradient(np.array(targets), **options)
    value_checks.verify()
    for a, b in zip(simulated, host):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # NaN where every row is ignored, on both


def test_sync_batchnorm_statistics_keep_the_count_on_the_device(sim):
    x = np.random.default_rng(1).standard_normal((6, 3, 2)).astype(np.float64)
    mean, var, count = batch_statistics(x, reduce=lambda array: array.__imul__(2))  # two equal ranks
    assert type(count) is not int and count == 24  # not read
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_on_a_device_scales_there_as_the_host_does(norm_type, max_norm, monkeypatch):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal(5).astype(np.float32)]

    def clipped():
        params = [dl.tensor(np.zeros_like(a), requires_grad=True) for a in arrays]
        for p, a in zip(params, arrays):
            p.grad = a.copy()
        return dl.nn.utils.clip_grad_norm_(params, max_norm, norm_type), [p.grad for p in params]

    host_total, host_grads = clipped()
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    total, grads = clipped()
    assert type(total) is not float  # left on the device, not read
    assert float(total) == pytest.approx(host_total, rel=1e-12)
    for g, h in zip(grads, host_grads):
        np.testing.assert_allclose(g, h, rtol=1e-6)


def test_clip_grad_norm_on_a_device_leaves_non_finite_gradients_and_raises_at_the_step_check(sim):
    p = dl.tensor(np.zeros(2), requires_grad=True)
    p.grad = np.array([1.0, np.inf])
    dl.nn.utils.clip_grad_norm_([p], 1.0)
    np.testing.assert_array_equal(p.grad, [1.0, np.inf])
    dl.nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is inf"):
        value_checks.verify()


def test_erfc_without_a_mask_equals_the_host_and_math_erfc(monkeypatch):
    x = np.concatenate([np.linspace(-30, 30, 2001), [0.0, 1.5, -1.5, 1.4999999, np.inf, -np.inf, np.nan]])
    host = erfc(x)
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    np.testing.assert_array_equal(erfc(x), host)
    reference = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(host, reference, rtol=1e-13, atol=0)


def test_cupys_sync_detector_is_on_inside_forbid_syncs_and_silent(recwarn):
    pytest.importorskip("cupy")  # runs where CuPy is installed, with or without a GPU: it launches nothing
    from cupy._core import syncdetect

    with device.CudaDevice(0).forbid_syncs():
        assert not syncdetect._is_allowed()
    assert syncdetect._is_allowed()
    assert not [w for w in recwarn if "allow_synchronize" in str(w.message)]


def test_batchnorm_with_a_cumulative_average_keeps_its_count_on_the_device(monkeypatch):
    x = np.random.default_rng(3).standard_normal((8, 3)).astype(np.float32)

    def running_stats():
        layer = dl.nn.BatchNorm1d(3, momentum=None)
        for scale in (1.0, 2.0, 3.0):
            layer(dl.tensor(x * scale))
        return layer.running_mean.data, layer.running_var.data

    host = running_stats()
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    for a, b in zip(running_stats(), host):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_backward_on_a_device_equals_the_host_without_counting_maxima(ties, monkeypatch):
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    if ties:
        x = np.round(x)  # windows with several maxima: the first one takes the gradient

    def gradient():
        t = dl.tensor(x, requires_grad=True)
        (F.max_pool2d(t, 2) * dl.tensor(np.arange(2 * 3 * 3 * 3.0).reshape(2, 3, 3, 3))).sum().backward()
        return t.grad

    host = gradient()
    monkeypatch.setattr(device, "_bound", device.get("sim"))
    np.testing.assert_array_equal(gradient(), host)
