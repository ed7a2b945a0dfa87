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
"""

from distdl import backend
from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype


def _internal_order(hidden, xp):
    """Row indices taking torch's (i, f, g, o) to (o, i, f, g)."""
    return xp.concatenate([xp.arange(3 * hidden, 4 * hidden), xp.arange(3 * hidden)])


def _zero_idle(array, steps):
    """Zero the waves in which a layer is idle (before it starts, after it ends): finite, and no gradient."""
    for layer in range(array.shape[0]):
        array[layer, :layer] = 0
        array[layer, layer + steps:] = 0


def _move_chunk(d_chunk, d_by_row, start, stop):
    """Waves start..stop of d_pre, wave-major in d_chunk, into their columns of d_by_row."""
    if start < stop:
        d_by_row[:, :, start:stop] = d_chunk[:, :stop - start].transpose(0, 2, 1, 3)


class _Factors:
    """The derivatives that do not depend on the recurrence, a few waves at a time (the latest first), so that
    their buffers stay small. Written through what forward kept: o(1-tanh(c)^2) = o - h*tanh(c),
    o(1-o)tanh(c) = h - h*o, i(1-i)g = ig - ig*i, i(1-g^2) = i - ig*g: two ufuncs each instead of three.
    """

    chunk = 8

    def __init__(self, gates, cs, tanh_c, hs, i_times_g):
        xp = xp_of(gates)
        self.gates, self.cs, self.tanh_c, self.hs, self.i_times_g = gates, cs, tanh_c, hs, i_times_g
        layers, _, width, batch = gates.shape
        hidden = width // 4
        # factor-major, so that each ufunc below writes one contiguous block
        self.from_dh = xp.empty((2, layers, self.chunk, hidden, batch), gates.dtype)   # dc/dh, d(o)/dh
        self.from_dc = xp.empty((3, layers, self.chunk, hidden, batch), gates.dtype)   # d(i, f, g)/dc
        self.start = None

    def at(self, wave):
        """(dc/dh, d(i, f, g)/dc, d(o)/dh) of every layer at ``wave``; waves are asked for from the last down."""
        if self.start is None or wave < self.start:
            self._compute(max(0, wave + 1 - self.chunk), wave + 1)
        k = wave - self.start
        return self.from_dh[0, :, k], self.from_dc[:, :, k].transpose(1, 0, 2, 3), self.from_dh[1, :, k]

    def _compute(self, start, stop):
        xp = xp_of(self.gates)
        self.start, n = start, stop - start
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
        per_layer = 4 if has_bias else 2
        layers, batch, hidden = h0.shape
        steps = x.shape[1] if batch_first else x.shape[0]
        features = x.shape[2]
        below = max(features, hidden)           # rows of the operand that hold the layer's input
        rows = hidden + 1 + below               # operand: [h_{t-1}; 1; input_t]
        waves = steps + layers - 1
        order = _internal_order(hidden, xp)
        w_cat = xp.zeros((layers, 4 * hidden, rows), x.dtype)
        for layer in range(layers):
            w_ih, w_hh, *bias = weights[per_layer * layer:per_layer * (layer + 1)]
            w_cat[layer, :, :hidden] = w_hh[order]
            if has_bias:
                w_cat[layer, :, hidden] = (bias[0] + bias[1])[order]
            w_cat[layer, :, hidden + 1:hidden + 1 + w_ih.shape[1]] = w_ih[order]
        w_scaled = w_cat.copy()
        w_scaled[:, :3 * hidden] *= 0.5         # sigmoid(a) = 0.5*tanh(a/2)+0.5; exact (a power of 2)

        operand = xp.zeros((layers, waves + 1, rows, batch), x.dtype)
        operand[:, :, hidden] = 1
        x_rows = x.transpose(1, 2, 0) if batch_first else x.transpose(0, 2, 1)   # (T, I, N)
        operand[0, :steps, hidden + 1:hidden + 1 + features] = x_rows
        gates = xp.empty((layers, waves, 4 * hidden, batch), x.dtype)
        cs = xp.empty((layers, waves + 1, hidden, batch), x.dtype)
        tanh_c = xp.empty((layers, waves, hidden, batch), x.dtype)
        i_times_g = xp.empty_like(tanh_c)
        _zero_idle(gates, steps)
        _zero_idle(cs[:, 1:], steps)
        _zero_idle(tanh_c, steps)
        _zero_idle(i_times_g, steps)
        for layer in range(layers):
            operand[layer, layer, :hidden] = h0[layer].T
            cs[layer, layer] = c0[layer].T
        keep_rows = None if keep is None else keep.transpose(0, 1, 3, 2)           # (L-1, T, H, N)
        h_rows, in_rows = slice(0, hidden), slice(hidden + 1, 2 * hidden + 1)
        for w in range(waves):
            lo, hi = max(0, w - steps + 1), min(layers, w + 1)
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
            h = operand[lo:hi, w + 1, h_rows]
            xp.multiply(a[:, :hidden], tanh_c[lo:hi, w], out=h)
            up = min(hi, layers - 1)             # the layers whose output feeds a layer above
            if lo < up:
                if keep_rows is None:
                    operand[lo + 1:up + 1, w + 1, in_rows] = operand[lo:up, w + 1, h_rows]
                else:
                    t = [w - layer for layer in range(lo, up)]
                    xp.multiply(operand[lo:up, w + 1, h_rows], keep_rows[list(range(lo, up)), t],
                                out=operand[lo + 1:up + 1, w + 1, in_rows])
        self.save_for_backward(x, w_cat, operand, gates, cs, tanh_c, i_times_g, keep_rows)
        self.shape = (steps, features, batch_first, has_bias)
        ends = (xp.arange(layers), steps + xp.arange(layers))
        top = operand[layers - 1, layers:layers + steps, h_rows]                   # (T, H, N)
        output = top.transpose(2, 0, 1) if batch_first else top.transpose(0, 2, 1)
        h_n = operand[ends[0], ends[1], h_rows].transpose(0, 2, 1)
        c_n = cs[ends[0], ends[1]].transpose(0, 2, 1)
        return output, h_n, c_n

    def backward(self, g_out, g_hn, g_cn):
        x, w_cat, operand, gates, cs, tanh_c, i_times_g, keep_rows = self.saved
        steps, features, batch_first, has_bias = self.shape
        xp = xp_of(gates)
        layers, waves, width, batch = gates.shape
        hidden = width // 4
        rows = w_cat.shape[2]
        h_rows, in_rows = slice(0, hidden), slice(hidden + 1, 2 * hidden + 1)

        factors = _Factors(gates, cs, tanh_c, operand[:, :, :hidden], i_times_g)
        f = gates[:, :, 2 * hidden:3 * hidden]
        g_top = g_out.transpose(1, 2, 0) if batch_first else g_out.transpose(0, 2, 1)   # (T, H, N)
        d_by_row = xp.empty((layers, width, waves, batch), gates.dtype)   # every wave's d_pre, as the GEMMs read it
        # the latest waves' d_pre, wave-major: the loop's ufuncs and matmul read and write contiguous blocks, and
        # a full chunk moves into d_by_row in one copy (runs of chunk*N values, not of N)
        d_chunk = xp.empty((layers, _Factors.chunk, width, batch), gates.dtype)
        d_split = d_chunk.reshape(layers, _Factors.chunk, 4, hidden, batch)
        chunk_start = chunk_stop = waves
        w_t = xp.ascontiguousarray(w_cat.transpose(0, 2, 1))
        d_operand = xp.zeros((layers, rows, batch), gates.dtype)   # d [h_{t-1}; 1; input_t] of the last wave
        d_operand[:, h_rows] = g_hn.transpose(0, 2, 1)
        d_operand[layers - 1, h_rows] += g_top[steps - 1]
        dc = xp.ascontiguousarray(g_cn.transpose(0, 2, 1))
        product = xp.empty((layers, hidden, batch), gates.dtype)
        for w in range(waves - 1, -1, -1):
            if w < chunk_start:
                _move_chunk(d_chunk, d_by_row, chunk_start, chunk_stop)
                chunk_start, chunk_stop = max(0, w + 1 - _Factors.chunk), w + 1
            k = w - chunk_start
            lo, hi = max(0, w - steps + 1), min(layers, w + 1)
            dc_from_dh, from_dc, o_from_dh = factors.at(w)
            dh = d_operand[lo:hi, h_rows]
            c = dc[lo:hi]
            c += xp.multiply(dh, dc_from_dh[lo:hi], out=product[lo:hi])
            xp.multiply(c[:, None], from_dc[lo:hi], out=d_split[lo:hi, k, 1:])
            xp.multiply(dh, o_from_dh[lo:hi], out=d_split[lo:hi, k, 0])
            c *= f[lo:hi, w]
            xp.matmul(w_t[lo:hi], d_chunk[lo:hi, k], out=d_operand[lo:hi])
            start = max(lo, 1)                  # layers whose input is the output of the layer below
            if start < hi:
                from_above = d_operand[start:hi, in_rows]
                if keep_rows is not None:
                    t = [w - layer for layer in range(start, hi)]
                    from_above = from_above * keep_rows[[layer - 1 for layer in range(start, hi)], t]
                d_operand[start - 1:hi - 1, h_rows] += from_above
            if w - 1 >= layers - 1:
                d_operand[layers - 1, h_rows] += g_top[w - layers]
        _move_chunk(d_chunk, d_by_row, chunk_start, chunk_stop)
        _zero_idle(d_by_row.transpose(0, 2, 1, 3), steps)

        back = xp.argsort(_internal_order(hidden, xp))   # back to torch's gate order
        grads = []
        for layer in range(layers):
            inputs = features if layer == 0 else hidden
            used = hidden + 1 + inputs
            by_row = operand[layer, :waves, :used].transpose(1, 0, 2).reshape(used, waves * batch)
            d_w = (d_by_row[layer].reshape(width, waves * batch) @ by_row.T)[back]   # every wave in one GEMM
            grads += [xp.ascontiguousarray(d_w[:, hidden + 1:]), xp.ascontiguousarray(d_w[:, :hidden])]
            if has_bias:
                grads += [d_w[:, hidden].copy(), d_w[:, hidden].copy()]
        d_x = None
        if self.needs_input_grad[0]:
            w_in = w_t[0, hidden + 1:hidden + 1 + features]                       # (I, 4H)
            d_rows = (w_in @ d_by_row[0, :, :steps].reshape(width, steps * batch)).reshape(features, steps, batch)
            d_x = d_rows.transpose(2, 1, 0) if batch_first else d_rows.transpose(1, 2, 0)
        d_h0 = d_operand[:, h_rows].transpose(0, 2, 1)
        return (d_x, d_h0, dc.transpose(0, 2, 1), *grads)


def lstm_stack(input, hx, cx, weights, batch_first=False, dropout=0.0, training=False):
    """A stack of unidirectional LSTM layers in one op; ``weights`` is one (w_ih, w_hh, b_ih, b_hh) per layer
    (biases None for none). Returns (output, h_n, c_n) as torch's LSTM, states (L, N, H)."""
    layers = len(weights)
    hidden = weights[0][1].shape[1]
    if input.ndim != 3:
        raise ValueError(f"lstm_stack: expects 3-d input, got shape {input.shape}")
    batch = input.shape[0] if batch_first else input.shape[1]
    steps = input.shape[1] if batch_first else input.shape[0]
    xp = xp_of(input.data)
    states = []
    for state in (hx, cx):
        if state is None:
            state = Tensor._from_op(xp.zeros((layers, batch, hidden), input.dtype), None, 0)
        if tuple(state.shape) != (layers, batch, hidden):
            raise ValueError(f"lstm_stack: initial state of shape {tuple(state.shape)}, expected "
                             f"(L, N, H) = {(layers, batch, hidden)}")
        states.append(state)
    has_bias = weights[0][2] is not None
    flat = []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        check_same_dtype("lstm_stack", input, w_ih)
        inputs = input.shape[2] if layer == 0 else hidden
        if w_ih.shape != (4 * hidden, inputs) or w_hh.shape != (4 * hidden, hidden):
            raise ValueError(f"lstm_stack: layer {layer}'s weights of shapes {w_ih.shape} and {w_hh.shape}, expected "
                             f"({4 * hidden}, {inputs}) and ({4 * hidden}, {hidden})")
        flat += [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
    keep = None
    if training and dropout and layers > 1:   # the masks F.dropout would draw between layers, in its order
        if dropout == 1:
            keep = xp.zeros((layers - 1, steps, batch, hidden), input.dtype)
        else:
            scale = input.dtype.type(1 / (1 - dropout))
            keep = xp.stack([backend.keep_mask((steps, batch, hidden), dropout, xp) * scale
                             for _ in range(layers - 1)])
    return LSTMStack.apply(input, *states, *flat, batch_first=batch_first, has_bias=has_bias, keep=keep)
