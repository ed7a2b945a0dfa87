"""Recurrent layers: one fused op per layer and direction, one Python loop iteration per time step.

The input projection ``x @ W_ih.T + b`` of every time step is one GEMM done before
the loop (an ordinary ``linear``); the op then runs the recurrence over time-major
arrays (T, N, gates*H), the LSTM over (T, gates*H, N) inside (see LSTMSequence). Everything in backward that does not depend on the
recurrence (the activation derivatives) is computed for all steps at once, and the
gradient of ``W_hh`` is one GEMM over all steps after the loop. Gate orders are
torch's: LSTM (i, f, g, o), GRU (r, z, n).
"""

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype
from distdl.functional.elementwise import add
from distdl.functional.linalg import linear
from distdl.functional.shape import reshape


def _sigmoid_(a):
    """In-place logistic as 0.5*tanh(0.5*a)+0.5: four ufuncs, no overflow."""
    xp = xp_of(a)
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


class _Recurrence(Function):
    """One layer, one direction, the whole sequence. ``reverse`` runs time backwards through views."""

    def forward(self, xw, *args, reverse, **options):
        self.reverse = reverse
        outputs = self.run(xw[::-1] if reverse else xw, *args, **options)
        return (outputs[0][::-1],) + outputs[1:] if reverse else outputs

    def backward(self, g_out, *g_states):
        grads = self.run_backward(g_out[::-1] if self.reverse else g_out, *g_states)
        return (grads[0][::-1],) + grads[1:] if self.reverse else grads


class RNNSequence(_Recurrence):
    """h_t = act(xw_t + h_{t-1} @ W_hh.T), act tanh or relu; both biases are folded into xw."""

    def run(self, xw, h0, w_hh, *, nonlinearity):
        xp = xp_of(xw)
        steps = xw.shape[0]
        hs = xp.empty((steps + 1,) + h0.shape, xw.dtype)
        hs[0] = h0
        w_t = w_hh.T
        for t in range(steps):
            h = hs[t + 1]
            xp.matmul(hs[t], w_t, out=h)
            h += xw[t]
            if nonlinearity == "tanh":
                xp.tanh(h, out=h)
            else:
                xp.maximum(h, 0, out=h)
        self.save_for_backward(hs, w_hh)
        self.nonlinearity = nonlinearity
        return hs[1:], hs[steps]

    def run_backward(self, g_out, g_hn):
        hs, w_hh = self.saved
        h = hs[1:]
        slope = 1 - h * h if self.nonlinearity == "tanh" else (h > 0).astype(h.dtype)
        d_pre = xp_of(h).empty_like(h)
        dh = g_hn.copy()
        for t in range(len(h) - 1, -1, -1):
            dh += g_out[t]
            xp_of(h).multiply(dh, slope[t], out=d_pre[t])
            dh = d_pre[t] @ w_hh
        return d_pre, dh, _recurrent_weight_grad(d_pre, hs)


class LSTMSequence(_Recurrence):
    """c_t = f*c + i*g, h_t = o*tanh(c_t); both biases are folded into xw.

    Inside, every step's arrays are gates x batch (4H, N): each gate is a contiguous block
    of rows, so the elementwise ops per step stream memory instead of striding through rows.
    """

    def run(self, xw, h0, c0, w_hh):
        xp = xp_of(xw)
        steps, batch, width = xw.shape
        hidden = width // 4
        # one tanh for all four gates: sigmoid(a) = 0.5*tanh(0.5a)+0.5 on i, f, o; tanh(a) on g.
        # The 0.5 is applied to xw and W_hh's rows once per sequence, not per step (exact: a power of 2).
        half = xp.full((width, 1), 0.5, xw.dtype)
        half[2 * hidden:3 * hidden] = 1
        shift = half.copy()
        shift[2 * hidden:3 * hidden] = 0
        gates = xp.empty((steps, width, batch), xw.dtype)
        xp.multiply(xw.transpose(0, 2, 1), half, out=gates)
        w_scaled = w_hh * half
        recurrent = xp.empty((width, batch), xw.dtype)
        hs = xp.empty((steps + 1, hidden, batch), xw.dtype)
        cs = xp.empty_like(hs)
        tanh_c = xp.empty((steps, hidden, batch), xw.dtype)
        hs[0], cs[0] = h0.T, c0.T
        for t in range(steps):
            a = gates[t]
            xp.matmul(w_scaled, hs[t], out=recurrent)
            a += recurrent
            xp.tanh(a, out=a)
            a *= half
            a += shift
            i, f, g, o = a[:hidden], a[hidden:2 * hidden], a[2 * hidden:3 * hidden], a[3 * hidden:]
            xp.multiply(f, cs[t], out=cs[t + 1])
            cs[t + 1] += i * g
            xp.tanh(cs[t + 1], out=tanh_c[t])
            xp.multiply(o, tanh_c[t], out=hs[t + 1])
        self.save_for_backward(gates, hs, cs, tanh_c, w_hh)
        outputs = hs[1:].transpose(0, 2, 1)
        return outputs, outputs[-1], cs[steps].T

    def run_backward(self, g_out, g_hn, g_cn):
        gates, hs, cs, tanh_c, w_hh = self.saved
        xp = xp_of(gates)
        steps, width, batch = gates.shape
        hidden = width // 4
        split = gates.reshape(steps, 4, hidden, batch)
        i, f, g, o = (split[:, k] for k in range(4))
        # everything but the recurrence, for all steps at once
        dc_from_dh = o * (1 - tanh_c * tanh_c)
        ifg_from_dc = xp.stack([g * i * (1 - i), cs[:-1] * f * (1 - f), i * (1 - g * g)], axis=1)
        o_from_dh = tanh_c * o * (1 - o)
        g_out = g_out.transpose(0, 2, 1)
        d_pre = xp.empty_like(gates)
        d_split = d_pre.reshape(steps, 4, hidden, batch)
        dh, dc = g_hn.T.copy(), g_cn.T.copy()  # C order, and ours to change in place
        w_t = w_hh.T
        for t in range(steps - 1, -1, -1):
            dh += g_out[t]
            dc += dh * dc_from_dh[t]
            xp.multiply(dc, ifg_from_dc[t], out=d_split[t, :3])
            xp.multiply(dh, o_from_dh[t], out=d_split[t, 3])
            dc *= f[t]
            xp.matmul(w_t, d_pre[t], out=dh)
        d_w_hh = xp.tensordot(d_pre, hs[:-1], axes=([0, 2], [0, 2]))  # every step in one GEMM
        return d_pre.transpose(0, 2, 1), dh.T, dc.T, d_w_hh


class GRUSequence(_Recurrence):
    """r, z = sigmoid(xw + h W_hh.T + b_hh); n = tanh(xw_n + r*(h W_hn.T + b_hn)); h' = n + z*(h - n).

    ``b_hh`` stays separate from xw because ``b_hn`` sits inside the reset gate.
    """

    def run(self, xw, h0, w_hh, b_hh):
        xp = xp_of(xw)
        steps, batch, width = xw.shape
        hidden = width // 3
        rz = xp.empty((steps, batch, 2 * hidden), xw.dtype)
        n = xp.empty((steps, batch, hidden), xw.dtype)
        hidden_n = xp.empty_like(n)  # h W_hn.T + b_hn, which the reset gate scales
        hs = xp.empty((steps + 1, batch, hidden), xw.dtype)
        hs[0] = h0
        w_t = w_hh.T
        for t in range(steps):
            hw = hs[t] @ w_t
            hw += b_hh
            _sigmoid_(xp.add(xw[t, :, :2 * hidden], hw[:, :2 * hidden], out=rz[t]))
            hidden_n[t] = hw[:, 2 * hidden:]
            xp.multiply(rz[t, :, :hidden], hidden_n[t], out=n[t])
            n[t] += xw[t, :, 2 * hidden:]
            xp.tanh(n[t], out=n[t])
            xp.subtract(hs[t], n[t], out=hs[t + 1])
            hs[t + 1] *= rz[t, :, hidden:]
            hs[t + 1] += n[t]
        self.save_for_backward(rz, n, hidden_n, hs, w_hh)
        return hs[1:], hs[steps]

    def run_backward(self, g_out, g_hn):
        rz, n, hidden_n, hs, w_hh = self.saved
        xp = xp_of(rz)
        steps, batch, hidden = n.shape
        r, z = rz[:, :, :hidden], rz[:, :, hidden:]
        n_from_dh = (1 - z) * (1 - n * n)           # d(n pre-activation) / dh
        z_from_dh = (hs[:-1] - n) * z * (1 - z)     # d(z pre-activation) / dh
        r_from_dn = hidden_n * r * (1 - r)          # d(r pre-activation) / d(n pre-activation)
        d_input = xp.empty((steps, batch, 3, hidden), n.dtype)   # d xw: r, z, n
        d_hidden = xp.empty_like(d_input)                        # d (h W_hh.T + b_hh): r, z, r*n
        dh = g_hn.copy()
        for t in range(steps - 1, -1, -1):
            dh += g_out[t]
            dn = xp.multiply(dh, n_from_dh[t], out=d_input[t, :, 2])
            xp.multiply(dh, z_from_dh[t], out=d_input[t, :, 1])
            xp.multiply(dn, r_from_dn[t], out=d_input[t, :, 0])
            d_hidden[t, :, :2] = d_input[t, :, :2]
            xp.multiply(dn, r[t], out=d_hidden[t, :, 2])
            dh = dh * z[t] + d_hidden[t].reshape(batch, 3 * hidden) @ w_hh
        d_hidden = d_hidden.reshape(steps, batch, 3 * hidden)
        return (d_input.reshape(steps, batch, 3 * hidden), dh, _recurrent_weight_grad(d_hidden, hs),
                d_hidden.sum(axis=(0, 1)))


def _recurrent_weight_grad(d_pre, hs):
    """dW_hh summed over every step in one GEMM: d_pre (T, N, G) against the previous states (T, N, H)."""
    width, hidden = d_pre.shape[-1], hs.shape[-1]
    return d_pre.reshape(-1, width).T @ hs[:-1].reshape(-1, hidden)


def _check(name, input, state, weight_ih, weight_hh, gates):
    check_same_dtype(name, input, weight_ih)
    hidden = weight_hh.shape[1]
    if input.ndim != 3:
        raise ValueError(f"{name}: expects time-major input (T, N, features), got shape {input.shape}")
    if weight_ih.shape != (gates * hidden, input.shape[2]) or weight_hh.shape != (gates * hidden, hidden):
        raise ValueError(
            f"{name}: weights of shapes {weight_ih.shape} and {weight_hh.shape} do not fit input {input.shape}: "
            f"expected ({gates * hidden}, {input.shape[2]}) and ({gates * hidden}, {hidden})"
        )
    if state.shape != (input.shape[1], hidden):
        raise ValueError(f"{name}: initial state of shape {state.shape}, expected (N, H) = {(input.shape[1], hidden)}")


def _zeros_state(input, weight_hh):
    xp = xp_of(input.data)
    return Tensor._from_op(xp.zeros((input.shape[1], weight_hh.shape[1]), input.dtype), None, 0)


def _projection(input, weight_ih, bias_ih, bias_hh):
    """x @ W_ih.T + b_ih + b_hh for every step in one GEMM (torch uses both biases or neither)."""
    if bias_ih is None:
        return linear(input, weight_ih)
    return linear(input, weight_ih, add(bias_ih, bias_hh))


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh", reverse=False):
    """An Elman RNN layer over time-major ``input`` (T, N, I); returns (output (T, N, H), h_n)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    hx = _zeros_state(input, weight_hh) if hx is None else hx
    _check("rnn", input, hx, weight_ih, weight_hh, 1)
    xw = _projection(input, weight_ih, bias_ih, bias_hh)
    return RNNSequence.apply(xw, hx, weight_hh, nonlinearity=nonlinearity, reverse=reverse)


def lstm(input, hx, cx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False):
    """An LSTM layer over time-major ``input`` (T, N, I); returns (output (T, N, H), h_n, c_n)."""
    hx = _zeros_state(input, weight_hh) if hx is None else hx
    cx = _zeros_state(input, weight_hh) if cx is None else cx
    _check("lstm", input, hx, weight_ih, weight_hh, 4)
    _check("lstm", input, cx, weight_ih, weight_hh, 4)
    xw = _projection(input, weight_ih, bias_ih, bias_hh)
    return LSTMSequence.apply(xw, hx, cx, weight_hh, reverse=reverse)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False):
    """A GRU layer over time-major ``input`` (T, N, I); returns (output (T, N, H), h_n)."""
    hx = _zeros_state(input, weight_hh) if hx is None else hx
    _check("gru", input, hx, weight_ih, weight_hh, 3)
    xw = linear(input, weight_ih) if bias_ih is None else linear(input, weight_ih, bias_ih)
    if bias_hh is None:
        bias_hh = Tensor._from_op(xp_of(input.data).zeros(weight_hh.shape[0], input.dtype), None, 0)
    return GRUSequence.apply(xw, hx, weight_hh, bias_hh, reverse=reverse)


def _one_step(layer, input, *rest):
    """A cell is the layer's fused op over a sequence of length one."""
    outputs = layer(reshape(input, (1,) + input.shape), *rest)
    return outputs[1:] if len(outputs) > 2 else outputs[1]


def rnn_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
    """One step: input (N, I), hx (N, H) or None -> h' (N, H)."""
    return _one_step(rnn, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)


def lstm_cell(input, hx, cx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One step: input (N, I), states (N, H) or None -> (h', c')."""
    return _one_step(lstm, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh)


def gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One step: input (N, I), hx (N, H) or None -> h' (N, H)."""
    return _one_step(gru, input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
