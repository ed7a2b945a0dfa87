"""RNN, LSTM and GRU against a hand-unrolled NumPy reference; gradients by finite differences (float64)."""

import numpy as np
import pytest

import distdl as dl
from distdl import nn
from gradcheck import gradcheck, module_gradcheck

rng = np.random.default_rng(11)
pytestmark = pytest.mark.usefixtures("float64")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def rnn_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    return np.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh), None


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = np.split(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def gru_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, axis=1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


STEPS = {nn.RNN: rnn_step, nn.LSTM: lstm_step, nn.GRU: gru_step}


def reference(module, x, h0, c0):
    """Unrolled by hand, time-major, layer by layer, each direction its own loop."""
    step = STEPS[type(module)]
    directions = ("", "_reverse") if module.bidirectional else ("",)
    hs, cs = [], []
    for layer in range(module.num_layers):
        outputs = []
        for d, suffix in enumerate(directions):
            weights = [getattr(module, f"{n}_l{layer}{suffix}").data for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            k = layer * len(directions) + d
            h, c = h0[k], c0[k]
            out = [None] * len(x)
            for t in (reversed(range(len(x))) if d else range(len(x))):
                h, c = step(x[t], h, c, *weights)
                out[t] = h
            outputs.append(np.stack(out))
            hs.append(h)
            cs.append(c)
        x = np.concatenate(outputs, axis=2)
    return x, np.stack(hs), (np.stack(cs) if cs[0] is not None else None)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers,bidirectional,batch_first,features", [
    (1, False, False, 3), (2, False, True, 3), (2, True, False, 3), (3, False, False, 6), (4, False, True, 3),
])
def test_against_unrolled_reference(cls, layers, bidirectional, batch_first, features):
    """Unidirectional LSTM stacks run as one wavefront op; 3 layers over 5 steps include ramps in and out,
    and 6 features (more than 4 hidden units) the wider input rows."""
    module = cls(features, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    steps, batch = 5, 2
    x = rng.standard_normal((steps, batch, features))
    states = layers * (2 if bidirectional else 1)
    h0, c0 = rng.standard_normal((states, batch, 4)), rng.standard_normal((states, batch, 4))
    hx = (dl.tensor(h0), dl.tensor(c0)) if cls is nn.LSTM else dl.tensor(h0)
    given = x.transpose(1, 0, 2) if batch_first else x
    output, final = module(dl.tensor(given), hx)
    expected_out, expected_h, expected_c = reference(module, x, h0, c0)
    np.testing.assert_allclose(output.numpy(), expected_out.transpose(1, 0, 2) if batch_first else expected_out, atol=1e-12)
    if cls is nn.LSTM:
        np.testing.assert_allclose(final[0].numpy(), expected_h, atol=1e-12)
        np.testing.assert_allclose(final[1].numpy(), expected_c, atol=1e-12)
    else:
        np.testing.assert_allclose(final.numpy(), expected_h, atol=1e-12)


def test_zero_initial_state_by_default():
    module = nn.LSTM(3, 4)
    x = rng.standard_normal((4, 2, 3))
    out, (h, c) = module(dl.tensor(x))
    expected_out, expected_h, _ = reference(module, x, np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))
    np.testing.assert_allclose(out.numpy(), expected_out, atol=1e-12)
    assert h.shape == c.shape == (1, 2, 4)


class Readout(nn.Module):
    """Sums every output of a recurrent module into one array, so that all of them carry gradient."""

    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent

    def forward(self, x, h0, c0=None):
        out, final = self.recurrent(x, h0 if c0 is None else (h0, c0))
        finals = final if isinstance(final, tuple) else (final,)
        return dl.concatenate([out.reshape(-1)] + [f.reshape(-1) for f in finals])


@pytest.mark.parametrize("cls,kwargs", [
    (nn.RNN, {}), (nn.RNN, {"nonlinearity": "relu"}), (nn.LSTM, {}), (nn.GRU, {}),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}), (nn.GRU, {"batch_first": True, "bias": False}),
    (nn.LSTM, {"num_layers": 3}), (nn.LSTM, {"num_layers": 3, "batch_first": True, "bias": False}),
])
def test_gradients_of_inputs_states_and_weights(cls, kwargs):
    module = Readout(cls(3, 4, **kwargs))
    states = (2 if kwargs.get("bidirectional") else 1) * kwargs.get("num_layers", 1)
    x = rng.standard_normal((2, 4, 3) if kwargs.get("batch_first") else (4, 2, 3))
    h0 = rng.standard_normal((states, 2, 4))
    extra = (rng.standard_normal((states, 2, 4)),) if cls is nn.LSTM else ()
    module_gradcheck(module, x, h0, *extra)


def test_lstm_stack_gradients_without_initial_states():
    """The wavefront op with zero initial states (none given), input wider than the hidden state."""
    class Outputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 4, num_layers=3, batch_first=True)

        def forward(self, x):
            out, (h, c) = self.lstm(x)
            return dl.concatenate([out.reshape(-1), h.reshape(-1), c.reshape(-1)])

    module_gradcheck(Outputs(), rng.standard_normal((2, 5, 6)))


def test_lstm_stack_functional_gradients_of_input_and_states():
    """Every input of the fused stack, element by element where small: x, h0, c0 and each layer's weights."""
    from distdl.functional.lstm_stack import lstm_stack
    layers, hidden, features = 3, 3, 2
    shapes = [(4 * hidden, features if layer == 0 else hidden) for layer in range(layers)]
    weights = [a for shape in shapes for a in (rng.standard_normal(shape) * 0.5, rng.standard_normal((4 * hidden, hidden)) * 0.5,
                                               rng.standard_normal(4 * hidden) * 0.1, rng.standard_normal(4 * hidden) * 0.1)]

    def fused(x, h0, c0, *w):
        out, h, c = lstm_stack(x, h0, c0, [w[4 * k:4 * k + 4] for k in range(layers)])
        return dl.concatenate([out.reshape(-1), h.reshape(-1), c.reshape(-1)])

    gradcheck(fused, rng.standard_normal((4, 2, features)), rng.standard_normal((layers, 2, hidden)),
              rng.standard_normal((layers, 2, hidden)), *weights)


def _per_layer(module, x, hx=None):
    """The same module run layer by layer (the path a bidirectional LSTM takes)."""
    return nn.rnn._RNNBase.forward(module, x, (None, None) if hx is None else hx)


def test_lstm_stack_dropout_draws_the_per_layer_masks():
    """In training, the fused stack applies between layers the masks the per-layer path draws from the same seed."""
    module = Readout(nn.LSTM(3, 4, num_layers=3, dropout=0.5))
    x = rng.standard_normal((5, 2, 3))
    h0, c0 = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    results = []
    for run in (module.recurrent.forward, lambda x, hx: _per_layer(module.recurrent, x, hx)):
        module.zero_grad()
        dl.seed(4)
        xt = dl.tensor(x, requires_grad=True)
        out, (h, c) = run(xt, (dl.tensor(h0), dl.tensor(c0)))
        (out * dl.tensor(np.arange(out.size, dtype=float).reshape(out.shape))).sum().backward()
        results.append([out.numpy(), h.numpy(), c.numpy(), xt.grad] + [p.grad.copy() for p in module.parameters()])
    for fused, reference_value in zip(*results):
        np.testing.assert_allclose(fused, reference_value, atol=1e-12)
    module.eval()
    assert not np.allclose(module.recurrent(dl.tensor(x))[0].numpy(), results[0][0])


@pytest.mark.parametrize("steps,layers,features,hidden,dropout", [(20, 3, 3, 4, 0.5), (17, 4, 7, 5, 0.0)])
def test_lstm_stack_equals_the_per_layer_path_over_long_sequences(steps, layers, features, hidden, dropout):
    """More waves than the backward's chunk of 8: every output, state and gradient as layer by layer."""
    module = Readout(nn.LSTM(features, hidden, num_layers=layers, dropout=dropout))
    x = rng.standard_normal((steps, 2, features))
    h0, c0 = rng.standard_normal((layers, 2, hidden)), rng.standard_normal((layers, 2, hidden))
    weights = rng.standard_normal((steps, 2, hidden))
    results = []
    for run in (module.recurrent.forward, lambda x, hx: _per_layer(module.recurrent, x, hx)):
        module.zero_grad()
        dl.seed(4)
        xt, h0t, c0t = (dl.tensor(a, requires_grad=True) for a in (x, h0, c0))
        out, (h, c) = run(xt, (h0t, c0t))
        ((out * dl.tensor(weights)).sum() + (h * h).sum() + (c * 3).sum()).backward()
        results.append([out.numpy(), h.numpy(), c.numpy(), xt.grad, h0t.grad, c0t.grad]
                       + [p.grad.copy() for p in module.parameters()])
    for fused, reference_value in zip(*results):
        np.testing.assert_allclose(fused, reference_value, atol=1e-12)


def test_lstm_stack_agrees_with_torch():
    """Outputs, final states and every gradient of a 3-layer stack against torch.nn.LSTM (float64)."""
    torch = pytest.importorskip("torch")
    ours, theirs = nn.LSTM(5, 6, num_layers=3, batch_first=True), torch.nn.LSTM(5, 6, num_layers=3, batch_first=True).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x, h0, c0 = rng.standard_normal((4, 7, 5)), rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 4, 6))
    out, (h, c) = ours(dl.tensor(x), (dl.tensor(h0), dl.tensor(c0)))
    peer_out, (peer_h, peer_c) = theirs(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    for a, b in ((out, peer_out), (h, peer_h), (c, peer_c)):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=1e-12)
    (out.sum() + h.sum() * 2 + c.sum() * 3).backward()
    (peer_out.sum() + peer_h.sum() * 2 + peer_c.sum() * 3).backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), atol=1e-10, err_msg=name)


class CellReadout(nn.Module):
    """An LSTM cell's two outputs side by side."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h, c):
        h, c = self.cell(x, (h, c))
        return dl.concatenate([h, c], axis=1)


@pytest.mark.parametrize("cls,step", [(nn.RNNCell, rnn_step), (nn.LSTMCell, lstm_step), (nn.GRUCell, gru_step)])
def test_cells_are_one_step(cls, step):
    cell = cls(3, 5)
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    expected_h, expected_c = step(x, h, c, *(p.data for p in cell.parameters()))
    if cls is nn.LSTMCell:
        got_h, got_c = cell(dl.tensor(x), (dl.tensor(h), dl.tensor(c)))
        np.testing.assert_allclose(got_c.numpy(), expected_c, atol=1e-12)
    else:
        got_h = cell(dl.tensor(x), dl.tensor(h))
    np.testing.assert_allclose(got_h.numpy(), expected_h, atol=1e-12)
    if cls is nn.LSTMCell:
        module_gradcheck(CellReadout(cell), x, h, c)
    else:
        module_gradcheck(cell, x, h)


def test_functional_lstm_gradcheck_longer_sequence():
    """A 12-step sequence, directional derivatives: the recurrence's gradient through many steps."""
    from distdl import functional as F
    w_ih, w_hh = rng.standard_normal((16, 3)) * 0.5, rng.standard_normal((16, 4)) * 0.5
    b_ih, b_hh = rng.standard_normal(16) * 0.1, rng.standard_normal(16) * 0.1
    gradcheck(lambda x, wi, wh, bi, bh: F.lstm(x, None, None, wi, wh, bi, bh, reverse=True)[0],
              rng.standard_normal((12, 2, 3)), w_ih, w_hh, b_ih, b_hh, max_full=20)


def test_parameter_names_and_shapes_match_torch():
    module = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    names = [(n, p.shape) for n, p in module.named_parameters()]
    assert names[:4] == [("weight_ih_l0", (16, 3)), ("weight_hh_l0", (16, 4)), ("bias_ih_l0", (16,)), ("bias_hh_l0", (16,))]
    assert names[4][0] == "weight_ih_l0_reverse" and names[8] == ("weight_ih_l1", (16, 8))
    assert len(names) == 16
    assert [n for n, _ in nn.GRUCell(2, 3).named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def test_wrong_initial_state_is_reported():
    module = nn.GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"initial state of shape \(1, 2, 4\), expected .* \(2, 2, 4\)"):
        module(dl.tensor(np.zeros((5, 2, 3))), dl.tensor(np.zeros((1, 2, 4))))
    with pytest.raises(TypeError, match="pair"):
        nn.LSTM(3, 4)(dl.tensor(np.zeros((5, 2, 3))), dl.tensor(np.zeros((1, 2, 4))))
