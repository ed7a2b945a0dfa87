"""The wavefront shared by the LSTM and GRU stacks (lstm_stack.py, gru_stack.py).

At wave w, layer l computes step t = w - l: what it reads (its own state from step t-1,
the layer below's output at step t) was written at wave w - 1, so all layers of a wave
share one batched matmul against the operand [h_{t-1}; 1; input_t], layer x wave x rows x
batch. Here: the operand, passing outputs up and their gradients down (with dropout's masks
between layers), the chunked backward buffers, the weight and input gradients, the checks.
"""

from distdl import backend
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional._util import check_same_dtype

CHUNK = 8   # waves of the backward's per-wave buffers at a time: small enough to stay in cache


def _active(wave, steps, layers):
    """The layers lo..hi-1 that compute a step at ``wave``."""
    return max(0, wave - steps + 1), min(layers, wave + 1)


def _zero_idle(array, steps):
    """Zero the waves in which a layer is idle (before it starts, after it ends): finite, and no gradient."""
    for layer in range(array.shape[0]):
        array[layer, :layer] = 0
        array[layer, layer + steps:] = 0


def _operand(x, h0, batch_first):
    """Every layer's GEMM operand [h_{t-1}; 1; input_t] at every wave, (L, waves + 1, H + 1 + max(I, H), N):
    the ones, x in layer 0's input rows and h0 in each layer's first wave; the rest is written wave by wave.
    Returns it, the number of steps and the number of waves."""
    xp = xp_of(x)
    layers, batch, hidden = h0.shape
    steps, features = x.shape[1] if batch_first else x.shape[0], x.shape[2]
    waves = steps + layers - 1
    operand = xp.zeros((layers, waves + 1, hidden + 1 + max(features, hidden), batch), x.dtype)
    operand[:, :, hidden] = 1
    operand[0, :steps, hidden + 1:hidden + 1 + features] = x.transpose(1, 2, 0) if batch_first else x.transpose(0, 2, 1)
    for layer in range(layers):
        operand[layer, layer, :hidden] = h0[layer].T
    return operand, steps, waves


def _by_layer(weights, has_bias):
    """The flat weights w_ih, w_hh[, b_ih, b_hh] of every layer, one tuple a layer."""
    per_layer = 4 if has_bias else 2
    return [weights[k:k + per_layer] for k in range(0, len(weights), per_layer)]


def _keep_rows(keep):
    """The dropout masks (L-1, T, N, H) as (L-1, T, H, N), or None."""
    return None if keep is None else keep.transpose(0, 1, 3, 2)


def _pass_up(operand, keep_rows, wave, lo, hi, hidden):
    """The outputs of layers lo..hi-1 at ``wave`` (dropped out) into the input rows of the layer above."""
    up = min(hi, operand.shape[0] - 1)      # the layers whose output feeds a layer above
    if lo < up:
        h, inputs = operand[lo:up, wave + 1, :hidden], operand[lo + 1:up + 1, wave + 1, hidden + 1:2 * hidden + 1]
        if keep_rows is None:
            inputs[...] = h
        else:
            t = [wave - layer for layer in range(lo, up)]
            xp_of(h).multiply(h, keep_rows[list(range(lo, up)), t], out=inputs)


def _pass_down(d_operand, keep_rows, wave, lo, hi, hidden):
    """The gradient of the inputs of layers max(lo, 1)..hi-1 at ``wave`` onto the outputs of the layers below."""
    start = max(lo, 1)                      # layers whose input is the output of the layer below
    if start < hi:
        from_above = d_operand[start:hi, hidden + 1:2 * hidden + 1]
        if keep_rows is not None:
            t = [wave - layer for layer in range(start, hi)]
            from_above = from_above * keep_rows[list(range(start - 1, hi - 1)), t]
        d_operand[start - 1:hi - 1, :hidden] += from_above


def _outputs(operand, steps, hidden, batch_first):
    """The top layer's outputs in x's layout and every layer's last state (L, N, H), views of ``operand``."""
    xp = xp_of(operand)
    layers = operand.shape[0]
    top = operand[layers - 1, layers:layers + steps, :hidden]                  # (T, H, N)
    last = operand[xp.arange(layers), steps + xp.arange(layers), :hidden]
    return (top.transpose(2, 0, 1) if batch_first else top.transpose(0, 2, 1)), last.transpose(0, 2, 1)


class _Chunked:
    """Per-wave values that do not depend on the recurrence, CHUNK waves at a time (the latest first), so that
    their buffers stay small; a subclass computes waves start..stop-1 and gives wave start + k's views."""

    start = None

    def at(self, wave):
        """The values of every layer at ``wave``; waves are asked for from the last down."""
        if self.start is None or wave < self.start:
            self.start = max(0, wave + 1 - CHUNK)
            self._compute(self.start, wave + 1)
        return self._views(wave - self.start)


class _Deltas:
    """Every wave's d_pre, (L, width, waves, N) as the weight GEMMs read it.

    The latest waves are kept wave-major in a chunk: the loop's ufuncs and matmul read and write
    contiguous blocks, and a full chunk moves into place in one copy (runs of CHUNK*N values, not of N).
    """

    def __init__(self, layers, width, waves, batch, dtype, xp):
        self.by_row = xp.empty((layers, width, waves, batch), dtype)
        self.chunk = xp.empty((layers, CHUNK, width, batch), dtype)
        self.start = self.stop = waves

    def at(self, wave):
        """Where wave's d_pre (L, width, N) goes; waves from the last down."""
        if wave < self.start:
            self._move()
            self.start, self.stop = max(0, wave + 1 - CHUNK), wave + 1
        return self.chunk[:, wave - self.start]

    def _move(self):
        if self.start < self.stop:
            self.by_row[:, :, self.start:self.stop] = self.chunk[:, :self.stop - self.start].transpose(0, 2, 1, 3)

    def finish(self, steps):
        """All of d_pre, the idle waves zero."""
        self._move()
        _zero_idle(self.by_row.transpose(0, 2, 1, 3), steps)
        return self.by_row


def _layer_rows(d_by_row, operand, hidden, features):
    """Each layer's d_pre (width, waves * N) and operand rows [h; 1; input] (H + 1 + its inputs, waves * N),
    every wave side by side: d of its [W_hh | b | W_ih] is one GEMM of the two over all waves."""
    layers, width, waves, batch = d_by_row.shape
    for layer in range(layers):
        used = hidden + 1 + (features if layer == 0 else hidden)
        by_row = operand[layer, :waves, :used].transpose(1, 0, 2).reshape(used, waves * batch)
        yield d_by_row[layer].reshape(width, waves * batch), by_row


def _input_grad(w_t, d_by_row, hidden, steps, features, batch_first):
    """d x: layer 0's input columns of [W_hh | b | W_ih], transposed, against its d_pre over waves 0..T-1."""
    width, batch = d_by_row.shape[1], d_by_row.shape[3]
    w_in = w_t[0, hidden + 1:hidden + 1 + features]                               # (I, width)
    d_rows = (w_in @ d_by_row[0, :, :steps].reshape(width, steps * batch)).reshape(features, steps, batch)
    return d_rows.transpose(2, 1, 0) if batch_first else d_rows.transpose(1, 2, 0)


def _prepare(name, input, states, weights, gates, batch_first, dropout, training):
    """Checks ``input``, the initial states (None: zeros) and each layer's (w_ih, w_hh, b_ih, b_hh), biases None
    for none. Returns the states (L, N, H), the weights flat (no biases where there are none), whether there are
    biases, and the dropout masks between layers (L-1, T, N, H): those F.dropout draws layer by layer, in its
    order, or None."""
    layers = len(weights)
    hidden = weights[0][1].shape[1]
    if input.ndim != 3:
        raise ValueError(f"{name}: expects 3-d input, got shape {input.shape}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout}")
    batch = input.shape[0] if batch_first else input.shape[1]
    steps = input.shape[1] if batch_first else input.shape[0]
    xp = xp_of(input.data)
    checked = []
    for state in states:
        if state is None:
            state = Tensor._from_op(xp.zeros((layers, batch, hidden), input.dtype), None, 0)
        if tuple(state.shape) != (layers, batch, hidden):
            raise ValueError(f"{name}: initial state of shape {tuple(state.shape)}, expected "
                             f"(L, N, H) = {(layers, batch, hidden)}")
        checked.append(state)
    has_bias = weights[0][2] is not None
    flat = []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        check_same_dtype(name, input, w_ih)
        inputs = input.shape[2] if layer == 0 else hidden
        if w_ih.shape != (gates * hidden, inputs) or w_hh.shape != (gates * hidden, hidden):
            raise ValueError(f"{name}: layer {layer}'s weights of shapes {w_ih.shape} and {w_hh.shape}, expected "
                             f"({gates * hidden}, {inputs}) and ({gates * hidden}, {hidden})")
        flat += [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
    keep = None
    if training and dropout and layers > 1:
        if dropout == 1:
            keep = xp.zeros((layers - 1, steps, batch, hidden), input.dtype)
        else:
            scale = input.dtype.type(1 / (1 - dropout))
            keep = xp.stack([backend.keep_mask((steps, batch, hidden), dropout, xp) * scale
                             for _ in range(layers - 1)])
    return checked, flat, has_bias, keep
