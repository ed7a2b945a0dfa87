"""Optimizers against their documented update rules written out in NumPy; state_dict round trips; lr schedules."""

import math

import numpy as np
import pytest

import distdl as dl
from distdl import optim
from distdl.optim import lr_scheduler

rng = np.random.default_rng(5)
A = rng.standard_normal((6, 6))
A = A @ A.T / 6 + np.eye(6)  # a fixed positive-definite quadratic 0.5 p'Ap - b'p
B = rng.standard_normal(6)
START = rng.standard_normal(6)


def gradient(p):
    return A @ p - B


# ---- the rules as torch.optim documents them, one step at a time --------------------------------
def sgd(p, g, s, t, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
    g = g + weight_decay * p
    if momentum:
        s["b"] = g.copy() if t == 1 else momentum * s["b"] + (1 - dampening) * g
        g = g + momentum * s["b"] if nesterov else s["b"]
    return p - lr * g


def adagrad(p, g, s, t, lr, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10):
    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    s["sum"] = s.get("sum", np.full_like(p, initial_accumulator_value)) + g * g
    return p - clr * g / (np.sqrt(s["sum"]) + eps)


def rmsprop(p, g, s, t, lr, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False):
    g = g + weight_decay * p
    s["v"] = alpha * s.get("v", 0) + (1 - alpha) * g * g
    v = s["v"]
    if centered:
        s["g"] = alpha * s.get("g", 0) + (1 - alpha) * g
        v = v - s["g"] ** 2
    if momentum:
        s["b"] = momentum * s.get("b", 0) + g / (np.sqrt(v) + eps)
        return p - lr * s["b"]
    return p - lr * g / (np.sqrt(v) + eps)


def adam(p, g, s, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, decoupled=False):
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    m_hat = s["m"] / (1 - b1 ** t)
    v = s["v"]
    if amsgrad:
        s["vmax"] = np.maximum(s.get("vmax", 0), v)
        v = s["vmax"]
    return p - lr * m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps)


def adamw(p, g, s, t, lr, weight_decay=1e-2, decoupled_weight_decay=True, **kw):
    return adam(p, g, s, t, lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay, **kw)


CASES = [
    (optim.SGD, sgd, dict(lr=0.1)),
    (optim.SGD, sgd, dict(lr=0.1, momentum=0.9)),
    (optim.SGD, sgd, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    (optim.SGD, sgd, dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01)),
    (optim.Adagrad, adagrad, dict(lr=0.3)),
    (optim.Adagrad, adagrad, dict(lr=0.3, lr_decay=0.1, weight_decay=0.05, initial_accumulator_value=0.5, eps=1e-6)),
    (optim.RMSprop, rmsprop, dict(lr=0.01)),
    (optim.RMSprop, rmsprop, dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5)),
    (optim.RMSprop, rmsprop, dict(lr=0.01, centered=True, momentum=0.9, eps=1e-4)),
    (optim.Adam, adam, dict(lr=0.05)),
    (optim.Adam, adam, dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    (optim.Adam, adam, dict(lr=0.05, amsgrad=True)),
    (optim.AdamW, adamw, dict(lr=0.05)),
    (optim.Adam, adamw, dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)),
    (optim.AdamW, adamw, dict(lr=0.05, weight_decay=0.2, amsgrad=True, betas=(0.5, 0.6))),
]


def run(cls, options, steps, param=None, optimizer=None):
    param = dl.tensor(START.copy(), requires_grad=True) if param is None else param
    optimizer = cls([param], **options) if optimizer is None else optimizer
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        param.grad = gradient(param.data)
        optimizer.step()
        trajectory.append(param.data.copy())
    return trajectory, param, optimizer


@pytest.mark.parametrize("cls,rule,options", CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_matches_documented_rule(cls, rule, options):
    trajectory, _, _ = run(cls, options, 8)
    p, state = START.copy(), {}
    for t, got in enumerate(trajectory, start=1):
        p = rule(p, gradient(p), state, t, **options)
        np.testing.assert_allclose(got, p, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


@pytest.mark.parametrize("cls,rule,options", CASES[1::2], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_maximize_follows_the_rule_with_the_gradient_negated(cls, rule, options):
    """torch's maximize=True: the rule applied to -grad (gradient ascent), every other step the same."""
    trajectory, _, _ = run(cls, {**options, "maximize": True}, 5)
    p, state = START.copy(), {}
    for t, got in enumerate(trajectory, start=1):
        p = rule(p, -gradient(p), state, t, **options)
        np.testing.assert_allclose(got, p, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


@pytest.mark.parametrize("cls,rule,options", CASES[1::2], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_state_dict_round_trip_mid_training(cls, rule, options):
    _, param, optimizer = run(cls, options, 4)
    saved_param, saved_state = param.data.copy(), optimizer.state_dict()
    expected, _, _ = run(cls, options, 3, param=param, optimizer=optimizer)
    fresh = dl.tensor(saved_param, requires_grad=True)
    restored = cls([fresh], lr=123.0)  # hyper-parameters come back from the state_dict too
    restored.load_state_dict(saved_state)
    assert restored.param_groups[0]["lr"] == options["lr"]
    got, _, _ = run(cls, options, 3, param=fresh, optimizer=restored)
    np.testing.assert_array_equal(np.array(got), np.array(expected))


def test_state_dict_holds_plain_numbers_and_arrays_and_is_a_copy():
    _, param, optimizer = run(optim.Adam, dict(lr=0.1, amsgrad=True), 2)
    state = optimizer.state_dict()
    entry = state["state"][0]
    assert entry["step"] == 2 and isinstance(entry["step"], int)
    assert all(isinstance(v, np.ndarray) for k, v in entry.items() if k != "step")
    assert state["param_groups"][0]["params"] == [0] and state["param_groups"][0]["betas"] == (0.9, 0.999)
    entry["exp_avg"][:] = 1e9
    assert (optimizer.state[param]["exp_avg"] != 1e9).all()


def test_param_groups_have_their_own_hyper_parameters():
    a, b = dl.tensor(np.ones(3), requires_grad=True), dl.tensor(np.ones(3), requires_grad=True)
    optimizer = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 1.0}], lr=0.1)
    a.grad, b.grad = np.ones(3), np.ones(3)
    optimizer.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 1 - 0.5 * 2)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": [a]}, {"params": [a]}], lr=0.1)
    with pytest.raises(TypeError, match="unknown hyper-parameters"):
        optim.SGD([{"params": [a], "momentun": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([a], lr=0.1, nesterov=True)


def test_load_state_dict_rejects_a_different_model():
    _, _, optimizer = run(optim.Adam, dict(lr=0.1), 1)
    other = optim.Adam([dl.tensor(np.ones(2), requires_grad=True), dl.tensor(np.ones(2), requires_grad=True)])
    with pytest.raises(ValueError, match=r"saved groups hold \[1\] parameters but this optimizer's hold \[2\]"):
        other.load_state_dict(optimizer.state_dict())


def test_updates_are_in_place_and_keep_float32():
    param = dl.tensor(np.ones(4, np.float32), requires_grad=True)
    data = param.data
    for cls in (optim.SGD, optim.Adagrad, optim.RMSprop, optim.Adam, optim.AdamW):
        param.grad = np.full(4, 0.5, np.float32)
        cls([param], lr=0.1).step()
    assert param.data is data and data.dtype == np.float32


def test_skips_parameters_without_gradient():
    a, b = dl.tensor(np.ones(2), requires_grad=True), dl.tensor(np.ones(2), requires_grad=True)
    a.grad = np.ones(2)
    optimizer = optim.Adam([a, b], lr=0.1)
    optimizer.step()
    assert (b.data == 1).all() and b not in optimizer.state


# ---- learning-rate schedules ---------------------------------------------------------------------
def lrs(make, epochs, base=1.0):
    optimizer = optim.SGD([dl.tensor(np.ones(1), requires_grad=True)], lr=base)
    scheduler = make(optimizer)
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values, scheduler, optimizer


SCHEDULES = [
    (lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5), lambda e: 0.5 ** (e // 3)),
    (lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.1), lambda e: 0.1 ** ((e >= 2) + (e >= 5))),
    (lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9), lambda e: 0.9 ** e),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=0.1), lambda e: 0.1 + 0.9 * (1 + math.cos(math.pi * e / 6)) / 2),
    (lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3), lambda e: 0.25 + 0.75 * min(e, 3) / 3),
    (lambda o: lr_scheduler.LambdaLR(o, lambda e: 1 / (e + 1)), lambda e: 1 / (e + 1)),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, total_iters=2),
                                             lr_scheduler.CosineAnnealingLR(o, T_max=4)], milestones=[2]),
     lambda e: 0.1 + 0.9 * e / 2 if e < 2 else (1 + math.cos(math.pi * (e - 2) / 4)) / 2),
]


@pytest.mark.parametrize("make,formula", SCHEDULES)
def test_schedule_values(make, formula):
    values, _, _ = lrs(make, 8)
    np.testing.assert_allclose(values, [formula(e) for e in range(8)], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make,formula", SCHEDULES[:5] + SCHEDULES[6:])
def test_schedule_state_dict_resumes(make, formula):
    _, scheduler, optimizer = lrs(make, 4)
    state, opt_state = scheduler.state_dict(), optimizer.state_dict()
    fresh = optim.SGD([dl.tensor(np.ones(1), requires_grad=True)], lr=1.0)
    resumed = make(fresh)
    fresh.load_state_dict(opt_state)
    resumed.load_state_dict(state)
    got = []
    for _ in range(4):
        resumed.step()
        got.append(fresh.param_groups[0]["lr"])
    np.testing.assert_allclose(got, [formula(e) for e in range(5, 9)], rtol=1e-12, atol=1e-15)


def test_schedule_state_from_elsewhere_sets_no_other_attribute():
    optimizer = optim.SGD([dl.tensor(np.ones(1), requires_grad=True)], lr=1.0)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=2)
    crafted = dict(scheduler.state_dict(), optimizer="not an optimizer")
    with pytest.raises(ValueError, match="unexpected keys \\['optimizer'\\]"):
        scheduler.load_state_dict(crafted)
    assert scheduler.optimizer is optimizer
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=5).state_dict()
    with pytest.raises(ValueError, match="missing keys \\['gamma', 'step_size'\\]"):
        scheduler.load_state_dict(cosine)
    sequential = lr_scheduler.SequentialLR(optimizer, [lr_scheduler.StepLR(optimizer, 2)] * 2, [3])
    with pytest.raises(ValueError, match="holds 1 schedules"):
        sequential.load_state_dict(dict(sequential.state_dict(), schedulers=[scheduler.state_dict()]))


def test_warmup_scales_each_group_from_its_own_base():
    a, b = dl.tensor(np.ones(1), requires_grad=True), dl.tensor(np.ones(1), requires_grad=True)
    optimizer = optim.SGD([{"params": [a], "lr": 0.4}, {"params": [b], "lr": 0.04}], lr=1.0)
    scheduler = lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    assert scheduler.get_last_lr() == [0.2, 0.02]
    scheduler.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.4, 0.04])


# ---- gradient clipping -------------------------------------------------------------------------
def grads(*arrays):
    params = [dl.tensor(np.zeros_like(a), requires_grad=True) for a in arrays]
    for p, a in zip(params, arrays):
        p.grad = a.copy()
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_scales_all_gradients_together(norm_type):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(5)
    params = grads(a, b)
    flat = np.concatenate([a.ravel(), b.ravel()])
    expected = np.linalg.norm(flat, norm_type)
    total = dl.nn.utils.clip_grad_norm_(params, max_norm=0.5, norm_type=norm_type)
    assert total == pytest.approx(expected)
    scale = 0.5 / (expected + 1e-6)
    np.testing.assert_allclose(params[0].grad, a * scale)
    np.testing.assert_allclose(params[1].grad, b * scale)
    untouched = grads(a)
    dl.nn.utils.clip_grad_norm_(untouched, max_norm=1e6, norm_type=norm_type)
    np.testing.assert_array_equal(untouched[0].grad, a)


def test_clip_grad_norm_non_finite_and_value_clipping():
    params = grads(np.array([1.0, np.inf]))
    with pytest.raises(RuntimeError, match="total norm"):
        dl.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    params = grads(np.array([-3.0, 0.2, 5.0]))
    dl.nn.utils.clip_grad_value_(params, 1.0)
    np.testing.assert_array_equal(params[0].grad, [-1.0, 0.2, 1.0])
