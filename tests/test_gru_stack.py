"""The GRU stack as one wavefront op (functional/gru_stack.py): finite differences, the per-layer path, torch."""

import numpy as np
import pytest

import distdl as dl
from distdl import nn
from distdl.functional.gru_stack import gru_stack
from gradcheck import gradcheck

rng = np.random.default_rng(5)


def _weights(layers, features, hidden, bias):
    """One (w_ih, w_hh, b_ih, b_hh) per layer, float64, flat; no biases with bias=False."""
    arrays = []
    for layer in range(layers):
        arrays += [rng.standard_normal((3 * hidden, features if layer == 0 else hidden)) * 0.5,
                   rng.standard_normal((3 * hidden, hidden)) * 0.5]
        if bias:
            arrays += [rng.standard_normal(3 * hidden) * 0.3, rng.standard_normal(3 * hidden) * 0.3]
    return arrays


def _per_layer(module, x, hx=None):
    """The same module run layer by layer, each layer's GRUSequence (the path a bidirectional GRU takes)."""
    return nn.rnn._RNNBase.forward(module, x, hx)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("steps", [1, 4])
def test_gradients_of_input_state_and_every_weight(layers, bias, batch_first, steps):
    """Central differences, element by element, for x, h0 and each layer's w_ih, w_hh, b_ih, b_hh; 3 features
    and 2 hidden units, so that layer 0's input rows are wider than the others'."""
    features, hidden, batch, per_layer = 3, 2, 2, 4 if bias else 2

    def fused(x, h0, *w):
        layer_weights = [tuple(w[per_layer * k:per_layer * (k + 1)]) + ((None, None) if not bias else ())
                         for k in range(layers)]
        out, h = gru_stack(x, h0, layer_weights, batch_first=batch_first)
        return dl.concatenate([out.reshape(-1), h.reshape(-1)])

    x = rng.standard_normal((batch, steps, features) if batch_first else (steps, batch, features))
    gradcheck(fused, x, rng.standard_normal((layers, batch, hidden)), *_weights(layers, features, hidden, bias))


def _run(module, forward, x, h0, readout, seed=4):
    """Outputs, h_n and the gradients of x, h0 and every parameter under ``forward``, from ``seed``."""
    module.zero_grad()
    dl.seed(seed)
    xt, h0t = dl.tensor(x, requires_grad=True), dl.tensor(h0, requires_grad=True)
    out, h = forward(xt, h0t)
    ((out * dl.tensor(readout)).sum() + (h * h).sum()).backward()
    return [out.numpy(), h.numpy(), xt.grad, h0t.grad] + [p.grad.copy() for p in module.parameters()]


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("steps,layers,features,hidden,batch_first,bias,dropout", [
    (20, 3, 3, 4, False, True, 0.0),     # more waves than the backward's chunk of 8
    (17, 4, 7, 5, True, False, 0.0),
    (1, 3, 2, 3, True, True, 0.0),
    (12, 3, 3, 4, False, True, 0.5),     # dropout between layers, in training
])
def test_equals_the_per_layer_path(dtype, atol, steps, layers, features, hidden, batch_first, bias, dropout):
    """Every output, state and gradient as layer by layer (which draws its dropout masks with F.dropout)."""
    module = nn.GRU(features, hidden, num_layers=layers, bias=bias, batch_first=batch_first, dropout=dropout,
                    dtype=dtype)
    x = rng.standard_normal((2, steps, features) if batch_first else (steps, 2, features)).astype(dtype)
    h0 = rng.standard_normal((layers, 2, hidden)).astype(dtype)
    readout = rng.standard_normal((2, steps, hidden) if batch_first else (steps, 2, hidden)).astype(dtype)
    fused = _run(module, module.forward, x, h0, readout)
    per_layer = _run(module, lambda x, h: _per_layer(module, x, h), x, h0, readout)
    for a, b in zip(fused, per_layer):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, atol=atol, rtol=atol)
    if dropout:
        assert not np.allclose(_run(module, module.forward, x, h0, readout, seed=5)[0], fused[0])
        module.eval()
        assert not np.allclose(module(dl.tensor(x), dl.tensor(h0))[0].numpy(), fused[0])


def test_no_dropout_in_eval():
    """dropout=0.5 in eval: the same values as a module without dropout."""
    module = nn.GRU(3, 4, num_layers=3, dropout=0.5, dtype=np.float64).eval()
    x = rng.standard_normal((6, 2, 3))
    out, h = module(dl.tensor(x))
    module.dropout = 0.0
    expected_out, expected_h = _per_layer(module, dl.tensor(x))
    np.testing.assert_allclose(out.numpy(), expected_out.numpy(), atol=1e-12)
    np.testing.assert_allclose(h.numpy(), expected_h.numpy(), atol=1e-12)


@pytest.mark.parametrize("batch_first,bias", [(True, True), (False, False)])
def test_agrees_with_torch(batch_first, bias):
    """Outputs, h_n and every gradient of a 3-layer stack against torch.nn.GRU with the same weights (float64)."""
    torch = pytest.importorskip("torch")
    ours = nn.GRU(5, 6, num_layers=3, batch_first=batch_first, bias=bias, dtype=np.float64)
    theirs = torch.nn.GRU(5, 6, num_layers=3, batch_first=batch_first, bias=bias).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((4, 7, 5) if batch_first else (7, 4, 5))
    h0 = rng.standard_normal((3, 4, 6))
    xt, peer_x = dl.tensor(x, requires_grad=True), torch.from_numpy(x).requires_grad_()
    h0t, peer_h0 = dl.tensor(h0, requires_grad=True), torch.from_numpy(h0).requires_grad_()
    out, h = ours(xt, h0t)
    peer_out, peer_h = theirs(peer_x, peer_h0)
    np.testing.assert_allclose(out.numpy(), peer_out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(h.numpy(), peer_h.detach().numpy(), atol=1e-12)
    (out.sum() + h.sum() * 2).backward()
    (peer_out.sum() + peer_h.sum() * 2).backward()
    np.testing.assert_allclose(xt.grad, peer_x.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(h0t.grad, peer_h0.grad.numpy(), atol=1e-10)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), atol=1e-10, err_msg=name)


def test_bad_input_is_reported():
    weights = [tuple(dl.tensor(a) for a in _weights(1, 3, 4, True))]
    x = dl.tensor(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="gru_stack: expects 3-d input"):
        gru_stack(dl.tensor(np.zeros((5, 3))), None, weights)
    with pytest.raises(ValueError, match=r"gru_stack: initial state of shape \(2, 2, 4\), expected .* \(1, 2, 4\)"):
        gru_stack(x, dl.tensor(np.zeros((2, 2, 4))), weights)
    with pytest.raises(ValueError, match=r"layer 0's weights of shapes \(12, 3\) and \(12, 4\), expected \(12, 2\)"):
        gru_stack(dl.tensor(np.zeros((5, 2, 2))), None, weights)
    with pytest.raises(ValueError, match="dropout must be in"):
        gru_stack(x, None, weights, dropout=1.5)
    with pytest.raises(TypeError, match="float32"):
        gru_stack(x.astype(np.float32), None, weights)
    with pytest.raises(ValueError, match=r"initial state of shape \(1, 2, 4\), expected .* \(3, 2, 4\)"):
        nn.GRU(3, 4, num_layers=3)(dl.tensor(np.zeros((5, 2, 3), np.float32)),
                                   dl.tensor(np.zeros((1, 2, 4), np.float32)))
