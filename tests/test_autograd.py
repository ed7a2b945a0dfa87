"""The engine: graph walk, accumulation, freeing, no_grad, hooks, dtypes."""

import gc
import weakref

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from distdl.autograd import engine


def test_gradient_accumulates_across_backward_calls_and_reused_nodes():
    x = dl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * x + x  # x used three times
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1 + 3)


def test_leaf_grad_is_not_aliased_between_leaves():
    a = dl.tensor(np.ones(3), requires_grad=True)
    b = dl.tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad += 10  # must not change b.grad
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_chain_of_ten_thousand_ops_needs_no_recursion():
    x = dl.tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**10_000], rtol=1e-9)


def test_graph_is_freed_after_backward_unless_retained():
    x = dl.tensor(np.array([2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [8.0])
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_requires_grad_false_is_refused_on_an_op_output_and_the_walk_skips_inputs_needing_none():
    x = dl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="only leaf tensors.*detach"):
        y.requires_grad_(False)
    assert y.requires_grad_(True) is y  # already true: a no-op, as in torch
    y.requires_grad = False  # set behind the method's back: the walk must still not follow y
    (y + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])  # d(y + x)/dx with y a constant


def test_a_node_keeps_only_what_its_backward_reads():
    x = dl.tensor(np.array([-1.0, 2.0, 3.0]), requires_grad=True)
    h = x * 2  # ReLU's backward reads its output, not this input
    freed = weakref.ref(h.data)
    y = F.relu(h)
    del h
    gc.collect()
    assert freed() is None
    (y * y).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 16.0, 24.0])  # d(4 relu(x)^2)/dx = 8x where x > 0


def test_a_queued_callback_runs_once_at_the_end_of_the_pass_that_queued_it():
    a, b = dl.tensor(np.ones(2), requires_grad=True), dl.tensor(np.ones(2), requires_grad=True)
    seen = []
    a.register_post_accumulate_grad_hook(lambda t: engine.queue_callback(lambda: seen.append(b.grad.copy())))
    (a * 2 + b * 3).sum().backward()
    np.testing.assert_array_equal(seen, [[3.0, 3.0]])  # once, after every leaf's gradient was final
    (b * 3).sum().backward()  # a pass that does not reach ``a`` runs nothing
    assert len(seen) == 1
    with pytest.raises(RuntimeError, match="outside a backward pass"):
        engine.queue_callback(lambda: None)


def test_no_grad_builds_no_graph():
    x = dl.tensor(np.ones(3), requires_grad=True)
    with dl.no_grad():
        y = (x * 2).sum()
        with dl.enable_grad():
            z = (x * 2).sum()
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad
    assert dl.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = dl.tensor(np.array([3.0]), requires_grad=True)
    y = x * x.detach()
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0])


def test_backward_with_explicit_gradient_for_non_scalar():
    x = dl.tensor(np.arange(3.0), requires_grad=True)
    (x * 2).backward(np.array([1.0, 10.0, 100.0]))
    np.testing.assert_allclose(x.grad, [2.0, 20.0, 200.0])


def test_multi_output_function_fills_missing_output_gradients_with_zeros():
    class SplitHalves(dl.Function):
        def forward(self, x):
            self.n = x.shape[0] // 2
            return x[: self.n] * 2, x[self.n:] * 3

        def backward(self, g_first, g_second):
            return np.concatenate([g_first * 2, g_second * 3])

    x = dl.tensor(np.ones(4), requires_grad=True)
    first, _ = SplitHalves.apply(x)
    first.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 0.0, 0.0])


def test_post_accumulate_hook_fires_once_with_final_gradient_during_backward():
    """Hooks fire as soon as each leaf's gradient is final: the last layer's before the first layer's."""
    rng = np.random.default_rng(0)
    w1 = dl.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    w2 = dl.tensor(rng.standard_normal((2, 4)), requires_grad=True)
    x = dl.tensor(rng.standard_normal((5, 3)))
    fired = []

    def record(name):
        def hook(t):
            fired.append((name, t.grad.copy()))
        return hook

    handles = [w1.register_post_accumulate_grad_hook(record("w1")), w2.register_post_accumulate_grad_hook(record("w2"))]
    h = F.relu(F.linear(x, w1))
    out = (F.linear(h, w2) + F.linear(h, w2)).sum()  # w2 used twice: its hook must wait for both uses
    out.backward()
    assert [name for name, _ in fired] == ["w2", "w1"]
    np.testing.assert_array_equal(fired[0][1], w2.grad)
    np.testing.assert_array_equal(fired[1][1], w1.grad)
    for handle in handles:
        handle.remove()
    out2 = F.linear(F.linear(x, w1), w2).sum()
    out2.backward()
    assert len(fired) == 2


def test_hook_can_see_grad_accumulated_in_place_into_a_preset_buffer():
    """DDP presets .grad as a view into a flat bucket; backward must add into it, not rebind it."""
    bucket = np.zeros(6)
    w = dl.tensor(np.ones((2, 3)), requires_grad=True)
    w.grad = bucket.reshape(2, 3)
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(bucket, np.full(6, 2.0))
    assert np.shares_memory(w.grad, bucket)


def _offering(tensor, place, scale):
    """Give ``tensor`` a provider (as DistributedDataParallel does) that offers ``place``; returns the offers made."""
    offers = []
    tensor._grad_into = lambda t: offers.append(t) or (place, scale)
    return offers


def test_the_op_that_gives_a_leaf_its_whole_gradient_writes_it_scaled_where_the_leaf_asked():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((5, 4)), dl.tensor(rng.standard_normal((3, 4)), requires_grad=True), \
        dl.tensor(rng.standard_normal(3), requires_grad=True)
    places = np.full(15, np.nan)  # one flat buffer, as a gradient bucket
    w_place, b_place = places[:12].reshape(3, 4), places[12:]
    _offering(w, w_place, 0.25), _offering(b, b_place, 0.25)
    g = rng.standard_normal((5, 3))
    F.linear(dl.tensor(x), w, b).backward(dl.tensor(g))
    assert w.grad is w_place and b.grad is b_place  # adopted: no copy
    np.testing.assert_allclose(w.grad, 0.25 * g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(b.grad, 0.25 * g.sum(0), rtol=1e-12)


def test_a_leaf_fed_by_two_nodes_or_holding_a_gradient_is_offered_no_place_and_sums_as_before():
    rng = np.random.default_rng(1)
    x, w = dl.tensor(rng.standard_normal((5, 4))), dl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    offers = _offering(w, np.zeros((3, 4)), 0.5)
    (F.linear(x, w).sum() + F.linear(x * 2, w).sum()).backward()  # the weight feeds two nodes
    np.testing.assert_allclose(w.grad, 3 * np.ones((5, 3)).T @ x.data, rtol=1e-12)
    once = w.grad.copy()
    F.linear(x, w).sum().backward()  # it already holds a gradient: the engine adds into it
    assert offers == [] and np.allclose(w.grad, once * 4 / 3)
    w.grad, w._grad_into = None, lambda t: None  # a provider that declines: the usual fresh gradient
    F.linear(x, w).sum().backward()
    np.testing.assert_allclose(w.grad, once / 3, rtol=1e-12)


def test_a_retained_graph_run_again_writes_only_where_that_pass_offered():
    """As DistributedDataParallel: a place offered in the first pass only; the second pass accumulates onto it."""
    rng = np.random.default_rng(2)
    x, w = dl.tensor(rng.standard_normal((5, 4))), dl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    place, passes = np.zeros((3, 4)), []
    w._grad_into = lambda t: None if passes else (place, 0.5)
    loss = F.linear(x, w).sum()
    loss.backward(retain_graph=True)
    passes.append(1)
    loss.backward()
    np.testing.assert_allclose(w.grad, 1.5 * np.ones((5, 3)).T @ x.data, rtol=1e-12)


def test_a_pass_cut_short_by_an_error_leaves_no_offer_for_the_next():
    rng = np.random.default_rng(3)
    x, w = dl.tensor(rng.standard_normal((5, 4))), dl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    place, passes = np.zeros((3, 4)), []
    w._grad_into = lambda t: None if passes else (place, 0.5)
    other = dl.tensor(np.ones(3), requires_grad=True)  # its hook fails before the weight's node runs
    other.register_post_accumulate_grad_hook(lambda t: None if passes else 1 / 0)
    loss = (F.linear(x, w) * other).sum()
    with pytest.raises(ZeroDivisionError):
        loss.backward(retain_graph=True)
    passes.append(1)  # the next pass offers nothing
    loss.backward()
    assert w.grad is not place
    np.testing.assert_allclose(w.grad, np.ones((5, 3)).T @ x.data, rtol=1e-12)


def test_dtypes_are_kept_and_numbers_follow_the_tensor():
    assert dl.tensor([1, 2]).dtype == np.float32
    assert dl.tensor(1.5).dtype == np.float32
    assert dl.tensor(np.ones(2)).dtype == np.float64
    assert dl.tensor(np.ones(2, np.int64)).dtype == np.int64
    x = dl.tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * 2.5 + 1) ** 2 / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_mixed_float_precisions_give_each_leaf_its_own_dtype():
    a = dl.tensor(np.ones(2, np.float32), requires_grad=True)
    b = dl.tensor(np.ones(2, np.float64), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_comparisons_give_plain_boolean_tensors():
    x = dl.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    mask = x > 0
    assert mask.dtype == np.bool_ and not mask.requires_grad
    np.testing.assert_array_equal((x == 3.0).numpy(), [False, False, True])
    y = F.where(mask, x, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 1.0])


def test_tensor_index_and_numpy_operands():
    x = dl.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    idx = dl.tensor(np.array([2, 0]))
    (x[idx] * np.array([1.0, 2.0])).sum().backward()
    np.testing.assert_array_equal(x.grad, [[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]])
    z = np.ones(2) + x[0]  # NumPy array on the left dispatches to the Tensor
    assert isinstance(z, dl.Tensor)


def test_item_numpy_repr_and_properties():
    x = dl.tensor(np.array([[1.5]]), requires_grad=True)
    assert x.item() == 1.5 and x.numpy().shape == (1, 1) and x.device == "cpu"
    assert "requires_grad=True" in repr(x) and x.ndim == 2 and x.size == 1
    assert x.to(np.float32).dtype == np.float32


def test_seed_makes_dropout_reproducible():
    x = dl.tensor(np.ones((50, 50), np.float32))
    dl.seed(7)
    a = F.dropout(x, 0.5).numpy()
    dl.seed(7)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert 0.4 < (a == 0).mean() < 0.6
    np.testing.assert_array_equal(np.unique(a), [0.0, 2.0])


def test_dropout_gradient_is_its_mask_and_identity_in_eval():
    x = dl.tensor(np.ones((20, 20)), requires_grad=True)
    y = F.dropout(x, 0.25)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.numpy())
    assert F.dropout(x, 0.25, training=False) is x


def test_leaf_gradients_are_private_writable_arrays():
    """A leaf adopts a fresh gradient without a copy, but never a shared array or a read-only view."""

    class SameArrayTwice(dl.Function):
        def forward(self, a, b):
            return a + b

        def backward(self, g):
            shared = g * 1.0
            return shared, shared

    a, b = dl.tensor(np.ones(3), requires_grad=True), dl.tensor(np.ones(3), requires_grad=True)
    SameArrayTwice.apply(a, b).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    x = dl.tensor(np.ones((2, 3)), requires_grad=True)
    x.reshape(6).sum().backward()  # the gradient arrives as a reshaped broadcast view
    x.grad += 1
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))
    root = dl.tensor(np.ones(2), requires_grad=True)
    upstream = np.array([1.0, 2.0])
    root.backward(upstream)
    root.grad += 1
    np.testing.assert_array_equal(upstream, [1.0, 2.0])
