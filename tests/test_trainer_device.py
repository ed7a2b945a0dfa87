"""Trainer(device=...): on the simulated asynchronous device (a GPU's timing on NumPy) a fit, evaluate and predict
equal the host's, bad input still raises the host's error, a non-finite loss stops or is skipped as on the host;
the same on two real ranks with DISTDL_DEVICE=sim. Without CuPy, device="cuda" says what to install."""

import importlib.util

import numpy as np
import pytest

import distdl as dl
from distdl import device, nn, optim, value_checks
from distdl.parallel import NonFiniteLossError
from multiproc import run


@pytest.fixture(autouse=True)
def unbound(monkeypatch):
    """Each test chooses its device itself: no binding left from another."""
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    monkeypatch.setattr(device, "_bound", None)
    yield
    value_checks._pending().clear()


def data(n=96, bad_label_at=None, nan_at=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    if bad_label_at is not None:
        y[bad_label_at] = 7
    if nan_at is not None:
        x[nan_at, 0] = np.nan
    return x, y


def trainer(on, **options):
    """A small classifier's Trainer on ``on``; "sim" binds the process to the simulated device first."""
    device._bound = device.get("sim") if on == "sim" else None
    dl.seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 3))
    return dl.Trainer(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), loss=nn.CrossEntropyLoss(),
                      metrics=["accuracy", "f1"], device=on, **options)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_fit_evaluate_and_predict_on_a_device_equal_the_host(prefetch):
    x, y = data()
    results = {}
    for on in ("cpu", "sim"):
        t = trainer(on)
        history = t.fit(x[:64], y[:64], epochs=2, batch_size=16, validation_data=(x[64:], y[64:]),
                        prefetch=prefetch, verbose=False)
        results[on] = (dict(history), t.evaluate((x[64:], y[64:]), batch_size=7), t.predict(x[64:], batch_size=5),
                       [p.data.copy() for p in t.model.parameters()])
    host, simulated = results["cpu"], results["sim"]
    assert simulated[0] == host[0] and simulated[1] == host[1]
    np.testing.assert_array_equal(simulated[2], host[2])
    for a, b in zip(simulated[3], host[3]):
        np.testing.assert_array_equal(a, b)


def test_a_bad_label_on_a_device_raises_the_hosts_error_after_the_step():
    x, y = data(bad_label_at=21)
    with pytest.raises(IndexError) as on_host:
        trainer("cpu").fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=False)
    t = trainer("sim")
    with pytest.raises(IndexError) as on_device:
        t.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=False)
    assert str(on_device.value) == str(on_host.value) == \
        "cross_entropy: target class indices must lie in [0, 3), got values from 0 to 7"
    assert t.global_step == 2  # read after the second step, the one holding the label


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_non_finite_loss_on_a_device_stops_after_its_step_or_is_skipped(policy):
    x, y = data(nan_at=37)
    t = trainer("sim", nonfinite=policy)
    if policy == "error":
        with pytest.raises(NonFiniteLossError, match=r"the loss is nan at step 3 \(batch 3 .*stopped after that "
                                                     r"step \(on sim the loss is read once a step, after it\)"):
            t.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=False)
        return
    t.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=False)
    assert t.skipped_steps == 1 and all(np.isfinite(p.data).all() for p in t.model.parameters())


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_a_simulated_trainer_needs_the_process_bound():
    with pytest.raises(ValueError, match=r"bind the process to the simulated device first"):
        dl.Trainer(nn.Linear(2, 2), "sgd", loss="mse", device="sim")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_a_gpu_trainer_without_cupy_says_what_to_install():
    with pytest.raises(RuntimeError, match=r"CuPy is not installed: pip install 'distdl\[gpu\]'"):
        trainer("cuda")


def test_two_ranks_on_the_simulated_device_reduce_exact_figures():
    result = run("zmq", 2, "trainer_job.py", "exact", timeout=120, env_for_rank=lambda rank: {"DISTDL_DEVICE": "sim"})
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("exact ok") == 2
