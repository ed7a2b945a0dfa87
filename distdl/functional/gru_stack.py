"""A unidirectional GRU stack as one op whose layers run as a wavefront, as lstm_stack.py's LSTM.

At wave w, layer l computes step t = w - l, all layers of a wave in one batched matmul and
one set of elementwise ops, against the operand [h_{t-1}; 1; input_t] (the helpers are in
_wavefront.py). torch's GRU is

    r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - z) n + z h = n + z (h - n).

r scales only the hidden part of n, b_hn inside, so n's two parts cannot share rows: the
GEMM's 4H rows are (xn, r, z, hn) with xn = W_in x + b_in and hn = W_hn h + b_hn, taken from
[W_hh | b | W_ih] with zeros where a part does not read the operand; both biases of r and z,
b_in and b_hn ride in the bias column. In that order the rows that read the input (xn, r, z)
and those that read h (r, z, hn) are each one block, so the weight gradients skip the zeros,
and r, z are the block of sigmoid rows, 0.5*tanh(a/2)+0.5 with the 1/2 folded into their
weight rows once per sequence.
"""

from distdl.autograd.function import Function
from distdl.backend import xp_of
from distdl.functional._wavefront import (CHUNK, _active, _by_layer, _Chunked, _Deltas, _input_grad, _keep_rows,
                                          _layer_rows, _operand, _outputs, _pass_down, _pass_up, _prepare, _zero_idle)


class _Factors(_Chunked):
    """The derivatives that do not depend on the recurrence, with u = 1 - z:
    d(n pre-activation)/dh' = u (1 - n^2), d(z pre-activation)/dh' = u z (h - n),
    d(r pre-activation)/d(n pre-activation) = hn r (1 - r).
    """

    def __init__(self, gates, ns, hs):
        xp = xp_of(gates)
        self.gates, self.ns, self.hs = gates, ns, hs
        layers, _, width, batch = gates.shape
        self.buffers = xp.empty((4, layers, CHUNK, width // 4, batch), gates.dtype)   # the three, then u

    def _views(self, k):
        """(dn/dh', dz/dh', dr/dn) of every layer."""
        return tuple(self.buffers[:3, :, k])

    def _compute(self, start, stop):
        xp = xp_of(self.gates)
        hidden = self.gates.shape[2] // 4
        r, z, hn = (self.gates[:, start:stop, k * hidden:(k + 1) * hidden] for k in range(1, 4))
        n, h = self.ns[:, start:stop], self.hs[:, start:stop]
        n_dh, z_dh, r_dn, u = self.buffers[:, :, :stop - start]
        xp.subtract(1, z, out=u)
        xp.multiply(u, n, out=n_dh)
        n_dh *= n
        xp.subtract(u, n_dh, out=n_dh)
        xp.subtract(h, n, out=z_dh)
        z_dh *= z
        z_dh *= u
        xp.multiply(hn, r, out=r_dn)
        xp.subtract(r_dn, xp.multiply(r_dn, r, out=u), out=r_dn)  # u is free again: its scratch


class GRUStack(Function):
    """Inputs: x (T, N, I) or (N, T, I), h0 (L, N, H), then per layer w_ih, w_hh[, b_ih, b_hh].

    Returns the top layer's outputs (in x's layout) and h_n (L, N, H). ``keep`` holds
    the dropout masks between layers, (L-1, T, N, H), or is None.
    """

    def forward(self, x, h0, *weights, batch_first, has_bias, keep):
        xp = xp_of(x)
        layers, batch, hidden = h0.shape
        operand, steps, waves = _operand(x, h0, batch_first)
        two, three = 2 * hidden, 3 * hidden
        w_cat = xp.zeros((layers, 4 * hidden, operand.shape[2]), x.dtype)   # rows xn, r, z, hn
        for layer, (w_ih, w_hh, *bias) in enumerate(_by_layer(weights, has_bias)):
            inputs = slice(hidden + 1, hidden + 1 + w_ih.shape[1])
            w_cat[layer, hidden:, :hidden] = w_hh
            w_cat[layer, hidden:three, inputs] = w_ih[:two]
            w_cat[layer, :hidden, inputs] = w_ih[two:]
            if has_bias:
                b_ih, b_hh = bias
                w_cat[layer, :hidden, hidden] = b_ih[two:]
                w_cat[layer, hidden:three, hidden] = b_ih[:two] + b_hh[:two]
                w_cat[layer, three:, hidden] = b_hh[two:]
        w_scaled = w_cat.copy()
        w_scaled[:, hidden:three] *= 0.5        # sigmoid(a) = 0.5*tanh(a/2)+0.5; exact (a power of 2)

        gates = xp.empty((layers, waves, 4 * hidden, batch), x.dtype)
        ns = xp.empty((layers, waves, hidden, batch), x.dtype)
        _zero_idle(gates, steps)
        _zero_idle(ns, steps)
        keep_rows = _keep_rows(keep)
        for w in range(waves):
            lo, hi = _active(w, steps, layers)
            a = gates[lo:hi, w]
            xp.matmul(w_scaled[lo:hi], operand[lo:hi, w], out=a)
            rz = a[:, hidden:three]
            xp.tanh(rz, out=rz)
            rz *= 0.5
            rz += 0.5
            n = ns[lo:hi, w]
            xp.multiply(a[:, hidden:two], a[:, three:], out=n)
            n += a[:, :hidden]
            xp.tanh(n, out=n)
            h = operand[lo:hi, w + 1, :hidden]
            xp.subtract(operand[lo:hi, w, :hidden], n, out=h)
            h *= a[:, two:three]
            h += n
            _pass_up(operand, keep_rows, w, lo, hi, hidden)
        self.save_for_backward(w_cat, operand, gates, ns, keep_rows)
        self.shape = (steps, x.shape[2], batch_first, has_bias)
        return _outputs(operand, steps, hidden, batch_first)

    def backward(self, g_out, g_hn):
        w_cat, operand, gates, ns, keep_rows = self.saved
        steps, features, batch_first, has_bias = self.shape
        xp = xp_of(gates)
        layers, waves, width, batch = gates.shape
        hidden = width // 4
        two, three = 2 * hidden, 3 * hidden

        factors = _Factors(gates, ns, operand[:, :, :hidden])
        r, z = gates[:, :, hidden:two], gates[:, :, two:three]
        g_top = g_out.transpose(1, 2, 0) if batch_first else g_out.transpose(0, 2, 1)   # (T, H, N)
        deltas = _Deltas(layers, width, waves, batch, gates.dtype, xp)
        w_t = xp.ascontiguousarray(w_cat.transpose(0, 2, 1))
        d_operand = xp.zeros((layers, w_cat.shape[2], batch), gates.dtype)   # d [h_{t-1}; 1; input_t] of the last wave
        d_operand[:, :hidden] = g_hn.transpose(0, 2, 1)
        d_operand[layers - 1, :hidden] += g_top[steps - 1]
        through_z = xp.empty((layers, hidden, batch), gates.dtype)          # dh' z: h's direct path into h'
        for w in range(waves - 1, -1, -1):
            lo, hi = _active(w, steps, layers)
            n_dh, z_dh, r_dn = factors.at(w)
            d_pre = deltas.at(w)[lo:hi]
            dh = d_operand[lo:hi, :hidden]
            dn = xp.multiply(dh, n_dh[lo:hi], out=d_pre[:, :hidden])
            xp.multiply(dn, r_dn[lo:hi], out=d_pre[:, hidden:two])
            xp.multiply(dh, z_dh[lo:hi], out=d_pre[:, two:three])
            xp.multiply(dn, r[lo:hi, w], out=d_pre[:, three:])
            xp.multiply(dh, z[lo:hi, w], out=through_z[lo:hi])
            xp.matmul(w_t[lo:hi], d_pre, out=d_operand[lo:hi])
            d_operand[lo:hi, :hidden] += through_z[lo:hi]
            _pass_down(d_operand, keep_rows, w, lo, hi, hidden)
            if w - 1 >= layers - 1:
                d_operand[layers - 1, :hidden] += g_top[w - layers]
        d_by_row = deltas.finish(steps)

        grads = []
        for d_pre, by_row in _layer_rows(d_by_row, operand, hidden, features):
            d_hh = d_pre[hidden:] @ by_row[:hidden + 1].T                  # rows r, z, hn: torch's (r, z, n)
            d_ih = d_pre[:three] @ by_row[hidden:].T                       # rows xn, r, z
            d_ih = xp.concatenate([d_ih[hidden:], d_ih[:hidden]])          # to (r, z, n)
            grads += [xp.ascontiguousarray(d_ih[:, 1:]), xp.ascontiguousarray(d_hh[:, :hidden])]
            if has_bias:
                grads += [d_ih[:, 0].copy(), d_hh[:, hidden].copy()]
        d_x = _input_grad(w_t, d_by_row, hidden, steps, features, batch_first) if self.needs_input_grad[0] else None
        return (d_x, d_operand[:, :hidden].transpose(0, 2, 1), *grads)


def gru_stack(input, hx, weights, batch_first=False, dropout=0.0, training=False):
    """A stack of unidirectional GRU layers in one op; ``weights`` is one (w_ih, w_hh, b_ih, b_hh) per layer
    (biases None for none). Returns (output, h_n) as torch's GRU, h_n (L, N, H)."""
    states, flat, has_bias, keep = _prepare("gru_stack", input, (hx,), weights, 3, batch_first, dropout, training)
    return GRUStack.apply(input, *states, *flat, batch_first=batch_first, has_bias=has_bias, keep=keep)
