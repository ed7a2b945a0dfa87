"""Recurrent layers RNN, LSTM, GRU and their single-step cells, with torch's parameter names and gate orders."""

import math

from distdl import functional as F
from distdl.functional.gru_stack import gru_stack
from distdl.functional.lstm_stack import lstm_stack
from distdl.nn import init
from distdl.nn.init import empty_parameter
from distdl.nn.module import Module

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _init_uniform_hidden(module, hidden_size):
    """torch's default for recurrent weights and biases: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
    bound = 1 / math.sqrt(hidden_size)
    for param in module.parameters():
        init.uniform_(param, -bound, bound)


class _RNNBase(Module):
    """Stacked, optionally bidirectional; each layer and direction is one fused op over the sequence."""

    mode = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None):
        super().__init__()
        if not 0 <= dropout <= 1:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, dropout, bidirectional
        gates = _GATES[self.mode] * hidden_size
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                setattr(self, f"weight_ih_l{layer}{suffix}", empty_parameter(gates, layer_input))
                setattr(self, f"weight_hh_l{layer}{suffix}", empty_parameter(gates, hidden_size))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{suffix}", empty_parameter(gates))
                    setattr(self, f"bias_hh_l{layer}{suffix}", empty_parameter(gates))
        _init_uniform_hidden(self, hidden_size)
        self._factory(device, dtype)

    def _weights(self, layer, suffix):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # no biases with bias=False
        return [getattr(self, f"{name}_l{layer}{suffix}", None) for name in names]

    def _check_state(self, state, batch):
        expected = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if state is not None and tuple(state.shape) != expected:
            raise ValueError(f"{self!r}: initial state of shape {tuple(state.shape)}, expected "
                             f"(num_layers * num_directions, N, hidden_size) = {expected}")

    def _layer(self, x, states, weights, reverse):
        raise NotImplementedError

    def forward(self, input, hx=None):
        """input (T, N, input_size), or (N, T, input_size) with batch_first; returns (output, h_n) and for
        LSTM (output, (h_n, c_n)); ``hx`` is h_0 (for LSTM the pair (h_0, c_0)) or None for zeros."""
        self.check_input(input, self.input_size, "features", axis=2, ndims=(3,))
        x = input.transpose(0, 1) if self.batch_first else input
        initial = hx if isinstance(hx, tuple) else (hx,)
        for state in initial:
            self._check_state(state, x.shape[1])
        finals = []
        directions = ("", "_reverse") if self.bidirectional else ("",)
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(directions):
                index = layer * len(directions) + d
                states = [None if s is None else s[index] for s in initial]
                output, *final = self._layer(x, states, self._weights(layer, suffix), reverse=d == 1)
                outputs.append(output)
                finals.append(final)
            x = outputs[0] if len(outputs) == 1 else F.cat(outputs, dim=2)
            if self.dropout and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        output = x.transpose(0, 1) if self.batch_first else x
        stacked = tuple(F.stack([f[k] for f in finals], dim=0) for k in range(len(finals[0])))
        return output, stacked if len(stacked) > 1 else stacked[0]

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text


class RNN(_RNNBase):
    """Elman RNN: h_t = tanh(x_t W_ih.T + b_ih + h_{t-1} W_hh.T + b_hh) (or relu)."""

    mode = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)
        self.nonlinearity = nonlinearity

    def _layer(self, x, states, weights, reverse):
        return F.rnn(x, states[0], *weights, nonlinearity=self.nonlinearity, reverse=reverse)


class LSTM(_RNNBase):
    """Long short-term memory, gates (i, f, g, o) in that order in the weights' rows.

    A unidirectional stack is one op whose layers run as a wavefront (functional/lstm_stack.py);
    a bidirectional one runs layer by layer.
    """

    mode = "lstm"

    def forward(self, input, hx=None):
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(f"{self!r}: hx must be the pair (h_0, c_0), got {type(hx).__name__}")
        if self.bidirectional:
            return super().forward(input, (None, None) if hx is None else hx)
        self.check_input(input, self.input_size, "features", axis=2, ndims=(3,))
        h0, c0 = (None, None) if hx is None else hx
        for state in (h0, c0):
            self._check_state(state, input.shape[0 if self.batch_first else 1])
        weights = [self._weights(layer, "") for layer in range(self.num_layers)]
        output, h_n, c_n = lstm_stack(input, h0, c0, weights, self.batch_first, self.dropout, self.training)
        return output, (h_n, c_n)

    def _layer(self, x, states, weights, reverse):
        return F.lstm(x, states[0], states[1], *weights, reverse=reverse)


class GRU(_RNNBase):
    """Gated recurrent unit, gates (r, z, n) in that order in the weights' rows.

    A unidirectional stack is one op whose layers run as a wavefront (functional/gru_stack.py);
    a bidirectional one runs layer by layer.
    """

    mode = "gru"

    def forward(self, input, hx=None):
        if self.bidirectional:
            return super().forward(input, hx)
        self.check_input(input, self.input_size, "features", axis=2, ndims=(3,))
        self._check_state(hx, input.shape[0 if self.batch_first else 1])
        weights = [self._weights(layer, "") for layer in range(self.num_layers)]
        return gru_stack(input, hx, weights, self.batch_first, self.dropout, self.training)

    def _layer(self, x, states, weights, reverse):
        return F.gru(x, states[0], *weights, reverse=reverse)


class _CellBase(Module):
    mode = None

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        gates = _GATES[self.mode] * hidden_size
        self.weight_ih = empty_parameter(gates, input_size)
        self.weight_hh = empty_parameter(gates, hidden_size)
        self.register_parameter("bias_ih", empty_parameter(gates) if bias else None)
        self.register_parameter("bias_hh", empty_parameter(gates) if bias else None)
        _init_uniform_hidden(self, hidden_size)
        self._factory(device, dtype)

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias_ih is not None else ", bias=False")


class RNNCell(_CellBase):
    """One step of RNN: input (N, input_size), hx (N, hidden) or None -> h'."""

    mode = "rnn"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        self.check_input(input, self.input_size, "features", ndims=(2,))
        return F.rnn_cell(input, hx, *self._weights(), nonlinearity=self.nonlinearity)


class LSTMCell(_CellBase):
    """One step of LSTM: input (N, input_size), hx (h, c) or None -> (h', c')."""

    mode = "lstm"

    def forward(self, input, hx=None):
        self.check_input(input, self.input_size, "features", ndims=(2,))
        h, c = (None, None) if hx is None else hx
        return F.lstm_cell(input, h, c, *self._weights())


class GRUCell(_CellBase):
    """One step of GRU: input (N, input_size), hx (N, hidden) or None -> h'."""

    mode = "gru"

    def forward(self, input, hx=None):
        self.check_input(input, self.input_size, "features", ndims=(2,))
        return F.gru_cell(input, hx, *self._weights())
