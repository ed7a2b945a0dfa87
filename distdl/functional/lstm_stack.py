"""A unidirectional LSTM stack as one op whose layers run as a wavefront.

At wave w, layer l computes step t = w - l: what it reads (its own state from step t-1,
the layer below's output at step t) was written at wave w - 1, so all layers of a wave
share one batched matmul and one set of elementwise ops, (L, gates x H, N) at a time:
about L times fewer NumPy calls per step than a loop per layer. Each layer's matmul takes
[W_hh | b | W_ih] against the operand [h_{t-1}; 1; input_t], so the bias and the input
projection of every layer (layer 0's input too) ride in the recurrent GEMM.

Inside, gates are in the order (o, i, f, g): the three sigmoid gates are one block of
rows, computed as 0.5*tanh(a/2)+0.5 with the 1/2 folded into the weights' rows once per
sequence, and the three gates that scale dc (i, f, g) are another. Arrays are
layer x wave x rows x batch, so each wave's slice is L contiguous blocks.

The wavefront's helpers, shared with the GRU stack, are in _wavefront.py.
"""

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._wavefront import (CHUNK, _active, _by_layer, _Chunked, _Deltas, _input_grad, _keep_rows,
                                          _layer_rows, _operand, _outputs, _pass_down, _pass_up, _prepare, _zero_idle)


def _internal_order(hidden, xp):
    """Row indices taking torch's (i, f, g, o) to (o, i, f, g)."""
    return xp.concatenate([xp.arange(3 * hidden, 4 * hidden), xp.arange(3 * hidden)])


class _Factors(_Chunked):
    """The LSTM's derivatives that do not depend on the recurrence. Written through what forward kept:
    o(1-tanh(c)^2) = o - h*tanh(c), o(1-o)tanh(c) = h - h*o, i(1-i)g = ig - ig*i, i(1-g^2) = i - ig*g:
    two ufuncs each instead of three.
    """

    def __init__(self, gates, cs, tanh_c, hs, i_times_g):
        xp = xp_of(gates)
        self.gates, self.cs, self.tanh_c, self.hs, self.i_times_g = gates, cs, tanh_c, hs, i_times_g
        layers, _, width, batch = gates.shape
        hidden = width // 4
        # factor-major, so that each ufunc below writes one contiguous block
        self.from_dh = xp.empty((2, layers, CHUNK, hidden, batch), gates.dtype)   # dc/dh, d(o)/dh
        self.from_dc = xp.empty((3, layers, CHUNK, hidden, batch), gates.dtype)   # d(i, f, g)/dc

    def _views(self, k):
        """(dc/dh, d(i, f, g)/dc, d(o)/dh) of every layer."""
        return self.from_dh[0, :, k], self.from_dc[:, :, k].transpose(1, 0, 2, 3), self.from_dh[1, :, k]

    def _compute(self, start, stop):
        xp = xp_of(self.gates)
        n = stop - start
        hidden = self.gates.shape[2] // 4
        o, i, f, g = (self.gates[:, start:stop, k * hidden:(k + 1) * hidden] for k in range(4))
        h, ig, tanh_c = self.hs[:, start + 1:stop + 1], self.i_times_g[:, start:stop], self.tanh_c[:, start:stop]
        dc_dh, o_dh = self.from_dh[:, :, :n]
        i_dc, f_dc, g_dc = self.from_dc[:, :, :n]
        xp.subtract(o, xp.multiply(h, tanh_c, out=dc_dh), out=dc_dh)
        xp.subtract(h, xp.multiply(h, o, out=o_dh), out=o_dh)
        xp.subtract(ig, xp.multiply(ig, i, out=i_dc), out=i_dc)
        xp.subtract(f, xp.multiply(f, f, out=f_dc), out=f_dc)
        f_dc *= self.cs[:, start:stop]
        xp.subtract(i, xp.multiply(ig, g, out=g_dc), out=g_dc)


class LSTMStack(Function):
    """Inputs: x (T, N, I) or (N, T, I), h0 and c0 (L, N, H), then per layer w_ih, w_hh[, b_ih, b_hh].

    Returns the top layer's outputs (in x's layout) and h_n, c_n (L, N, H). ``keep`` holds
    the dropout masks between layers, (L-1, T, N, H), or is None.
    """

    def forward(self, x, h0, c0, *weights, batch_first, has_bias, keep):
        xp = xp_of(x)
        layers, batch, hidden = h0.shape
        operand, steps, waves = _operand(x, h0, batch_first)
        order = _internal_order(hidden, xp)
        w_cat = xp.zeros((layers, 4 * hidden, operand.shape[2]), x.dtype)
        for layer, (w_ih, w_hh, *bias) in enumerate(_by_layer(weights, has_bias)):
            w_cat[layer, :, :hidden] = w_hh[order]
            if has_bias:
                w_cat[layer, :, hidden] = (bias[0] + bias[1])[order]
            w_cat[layer, :, hidden + 1:hidden + 1 + w_ih.shape[1]] = w_ih[order]
        w_scaled = w_cat.copy()
        w_scaled[:, :3 * hidden] *= 0.5         # sigmoid(a) = 0.5*tanh(a/2)+0.5; exact (a power of 2)

        gates = xp.empty((layers, waves, 4 * hidden, batch), x.dtype)
        cs = xp.empty((layers, waves + 1, hidden, batch), x.dtype)
        tanh_c = xp.empty((layers, waves, hidden, batch), x.dtype)
        i_times_g = xp.empty_like(tanh_c)
        _zero_idle(gates, steps)
        _zero_idle(cs[:, 1:], steps)
        _zero_idle(tanh_c, steps)
        _zero_idle(i_times_g, steps)
        for layer in range(layers):
            cs[layer, layer] = c0[layer].T
        keep_rows = _keep_rows(keep)
        for w in range(waves):
            lo, hi = _active(w, steps, layers)
            a = gates[lo:hi, w]
            xp.matmul(w_scaled[lo:hi], operand[lo:hi, w], out=a)
            xp.tanh(a, out=a)
            sig = a[:, :3 * hidden]
            sig *= 0.5
            sig += 0.5
            c = cs[lo:hi, w + 1]
            xp.multiply(a[:, 2 * hidden:3 * hidden], cs[lo:hi, w], out=c)
            ig = xp.multiply(a[:, hidden:2 * hidden], a[:, 3 * hidden:], out=i_times_g[lo:hi, w])
            c += ig
            xp.tanh(c, out=tanh_c[lo:hi, w])
            xp.multiply(a[:, :hidden], tanh_c[lo:hi, w], out=operand[lo:hi, w + 1, :hidden])
            _pass_up(operand, keep_rows, w, lo, hi, hidden)
        self.save_for_backward(x, w_cat, operand, gates, cs, tanh_c, i_times_g, keep_rows)
        self.shape = (steps, x.shape[2], batch_first, has_bias)
        output, h_n = _outputs(operand, steps, hidden, batch_first)
        c_n = cs[xp.arange(layers), steps + xp.arange(layers)].transpose(0, 2, 1)
        return output, h_n, c_n

    def backward(self, g_out, g_hn, g_cn):
        x, w_cat, operand, gates, cs, tanh_c, i_times_g, keep_rows = self.saved
        steps, features, batch_first, has_bias = self.shape
        xp = xp_of(gates)
        layers, waves, width, batch = gates.shape
        hidden = width // 4
        h_rows = slice(0, hidden)

        factors = _Factors(gates, cs, tanh_c, operand[:, :, :hidden], i_times_g)
        f = gates[:, :, 2 * hidden:3 * hidden]
        g_top = g_out.transpose(1, 2, 0) if batch_first else g_out.transpose(0, 2, 1)   # (T, H, N)
        deltas = _Deltas(layers, width, waves, batch, gates.dtype, xp)
        w_t = xp.ascontiguousarray(w_cat.transpose(0, 2, 1))
        d_operand = xp.zeros((layers, w_cat.shape[2], batch), gates.dtype)   # d [h_{t-1}; 1; input_t] of the last wave
        d_operand[:, h_rows] = g_hn.transpose(0, 2, 1)
        d_operand[layers - 1, h_rows] += g_top[steps - 1]
        dc = xp.ascontiguousarray(g_cn.transpose(0, 2, 1))
        product = xp.empty((layers, hidden, batch), gates.dtype)
        for w in range(waves - 1, -1, -1):
            lo, hi = _active(w, steps, layers)
            dc_from_dh, from_dc, o_from_dh = factors.at(w)
            d_pre = deltas.at(w)[lo:hi]
            d_split = d_pre.reshape(hi - lo, 4, hidden, batch)
            dh = d_operand[lo:hi, h_rows]
            c = dc[lo:hi]
            c += xp.multiply(dh, dc_from_dh[lo:hi], out=product[lo:hi])
            xp.multiply(c[:, None], from_dc[lo:hi], out=d_split[:, 1:])
            xp.multiply(dh, o_from_dh[lo:hi], out=d_split[:, 0])
            c *= f[lo:hi, w]
            xp.matmul(w_t[lo:hi], d_pre, out=d_operand[lo:hi])
            _pass_down(d_operand, keep_rows, w, lo, hi, hidden)
            if w - 1 >= layers - 1:
                d_operand[layers - 1, h_rows] += g_top[w - layers]
        d_by_row = deltas.finish(steps)

        back = xp.argsort(_internal_order(hidden, xp))   # back to torch's gate order
        grads = []
        for d_pre, by_row in _layer_rows(d_by_row, operand, hidden, features):
            d_w = (d_pre @ by_row.T)[back]
            grads += [xp.ascontiguousarray(d_w[:, hidden + 1:]), xp.ascontiguousarray(d_w[:, :hidden])]
            if has_bias:
                grads += [d_w[:, hidden].copy(), d_w[:, hidden].copy()]
        d_x = _input_grad(w_t, d_by_row, hidden, steps, features, batch_first) if self.needs_input_grad[0] else None
        d_h0 = d_operand[:, h_rows].transpose(0, 2, 1)
        return (d_x, d_h0, dc.transpose(0, 2, 1), *grads)


def lstm_stack(input, hx, cx, weights, batch_first=False, dropout=0.0, training=False):
    """A stack of unidirectional LSTM layers in one op; ``weights`` is one (w_ih, w_hh, b_ih, b_hh) per layer
    (biases None for none). Returns (output, h_n, c_n) as torch's LSTM, states (L, N, H)."""
    states, flat, has_bias, keep = _prepare("lstm_stack", input, (hx, cx), weights, 4, batch_first, dropout, training)
    return LSTMStack.apply(input, *states, *flat, batch_first=batch_first, has_bias=has_bias, keep=keep)
