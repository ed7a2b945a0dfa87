"""Every differentiable op, one line per case: shared by the gradient checks and the CuPy-against-NumPy checks.

``build_cases(put)`` draws the same inputs on every call (a fixed seed) and hands every
constant the ops close over (labels, masks, indices, weights) to ``put``, so that a
caller can place them where the inputs go: on the GPU, or cast to float32. Importable
without pytest (scripts/gpu_check.py uses it where pytest may not be installed).
"""

import numpy as np

from distdl import functional as F


class Draws:
    """Random inputs shaped for finite differences: no kink, tie or pole near a value."""

    def __init__(self, rng):
        self.rng = rng

    def away(self, *shape):
        """Values away from zero, so kinks (relu, abs, clip, max) are never straddled by the difference step."""
        return self.rng.choice([-1.0, 1.0], size=shape) * self.rng.uniform(0.2, 1.0, size=shape)

    def positive(self, *shape):
        return self.rng.uniform(0.5, 2.0, size=shape)

    def distinct(self, *shape):
        """Well-separated values in random order: max/min and max-pooling have no near-ties."""
        n = int(np.prod(shape))
        return self.rng.permutation(np.linspace(-1, 1, n)).reshape(shape)


def _keep(array):
    return array


def _recurrence(layer, *args, **options):
    """A recurrent layer's output and final states in one tensor, each weighted differently."""
    output, *states = layer(*args, **options)
    return sum((k + 2) * state for k, state in enumerate(states)) + output.sum(axis=0)


def build_cases(put=_keep):
    """name -> (fn, inputs): ``fn`` takes one tensor per input (NumPy float64 arrays, the same on every call)."""
    rng = np.random.default_rng(1234)
    d = Draws(rng)
    away, positive, distinct = d.away, d.positive, d.distinct
    labels_host = rng.integers(0, 5, size=6)
    labels = put(labels_host)
    labels_ignored = put(np.where(np.arange(6) % 3 == 0, -100, labels_host))
    labels_2d = put(rng.integers(0, 4, size=(3, 5)))
    soft_targets = put(rng.dirichlet(np.ones(5), size=6))
    class_weight = put(positive(5))
    element_weight = put(positive(4, 3))
    bits = put(rng.integers(0, 2, size=(4, 3)).astype(np.float64))
    index = put(np.array([0, 2, 2, 1]))
    mask = put(np.array([True, False, True, True]))
    tokens = put(np.array([[1, 3, 3], [0, 1, 4]]))
    running_mean, running_var = put(away(2)), put(positive(2))
    reshape_weights = put(away(4, 3))
    probabilities = rng.uniform(0.1, 0.9, size=(4, 3))

    return {
        # elementwise, with broadcasting
        "add": (lambda a, b: a + b, [away(3, 4), away(4)]),
        "add_broadcast_both": (lambda a, b: a + b, [away(2, 1, 3), away(4, 1)]),
        "sub": (lambda a, b: a - b, [away(3, 4), away(3, 1)]),
        "mul": (lambda a, b: a * b, [away(2, 3), away(1, 3)]),
        "div": (lambda a, b: a / b, [away(2, 3), positive(3)]),
        "scalar_ops": (lambda a: (2.0 - a) * 3.0 / (a + 4.0) - 1.5 / (a * a + 1.0), [away(3, 2)]),
        "neg": (lambda a: -a, [away(4)]),
        "pow_int": (lambda a: a**3, [away(2, 3)]),
        "pow_square": (lambda a: a**2, [away(2, 3)]),
        "pow_fraction": (lambda a: a**0.5, [positive(5)]),
        "pow_tensor": (lambda a, b: a**b, [positive(2, 3), away(3)]),
        "rpow": (lambda a: 2.0**a, [away(4)]),
        "exp": (F.exp, [away(3, 3)]),
        "log": (F.log, [positive(3, 3)]),
        "sqrt": (F.sqrt, [positive(6)]),
        "abs": (F.abs, [away(6)]),
        "clip": (lambda a: F.clip(a, -0.5, 0.5), [rng.choice([-0.9, -0.3, 0.1, 0.4, 0.8], size=(3, 4))]),
        "where": (lambda a, b: F.where(mask, a, b), [away(3, 4), away(4)]),
        # activations
        "relu": (F.relu, [away(4, 5)]),
        "leaky_relu": (lambda a: F.leaky_relu(a, 0.1), [away(4, 5)]),
        "sigmoid": (F.sigmoid, [away(4, 5) * 4]),
        "tanh": (F.tanh, [away(4, 5) * 2]),
        "gelu": (F.gelu, [away(4, 5) * 3]),
        "gelu_large": (F.gelu, [np.array([-4.0, -2.6, 2.6, 5.0])]),
        "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [away(4, 5) * 3]),
        "softmax": (lambda a: F.softmax(a, axis=1), [away(3, 5)]),
        "softmax_axis0": (lambda a: F.softmax(a, axis=0), [away(3, 5)]),
        "log_softmax": (lambda a: F.log_softmax(a, axis=-1), [away(2, 3, 4)]),
        # reductions
        "sum_all": (lambda a: a.sum(), [away(3, 4)]),
        "sum_axis": (lambda a: a.sum(axis=1), [away(3, 4, 2)]),
        "sum_axes_keepdims": (lambda a: a.sum(axis=(0, 2), keepdims=True), [away(3, 4, 2)]),
        "mean": (lambda a: a.mean(axis=-1), [away(3, 4)]),
        "max_all": (lambda a: a.max(), [distinct(3, 4)]),
        "max_axis": (lambda a: a.max(axis=0), [distinct(3, 4)]),
        "min_axis_keepdims": (lambda a: a.min(axis=1, keepdims=True), [distinct(3, 4)]),
        "var": (lambda a: a.var(axis=0), [away(5, 3)]),
        "var_ddof": (lambda a: a.var(ddof=1), [away(5, 3)]),
        # shapes and indexing
        "reshape": (lambda a: a.reshape(4, 3) * reshape_weights, [away(3, 4)]),
        "transpose": (lambda a: a.transpose(0, 2), [away(2, 3, 4)]),
        "permute": (lambda a: a.permute(2, 0, 1), [away(2, 3, 4)]),
        "T": (lambda a: a.T, [away(2, 3)]),
        "flatten": (lambda a: a.flatten(1), [away(2, 3, 2)]),
        "squeeze_unsqueeze": (lambda a: a.unsqueeze(0).squeeze(1), [away(1, 3)]),
        "slice": (lambda a: a[1:, ::2], [away(3, 5)]),
        "int_index": (lambda a: a[1, 2], [away(3, 4)]),
        "array_index_repeats": (lambda a: a[index], [away(3, 2)]),
        "array_index_pairs": (lambda a: a[index, index[::-1] % 2], [away(3, 2)]),
        "bool_mask": (lambda a: a[mask], [away(4, 2)]),
        "concatenate": (lambda a, b: F.concatenate([a, b, a], axis=1), [away(2, 3), away(2, 1)]),
        "stack": (lambda a, b: F.stack([a, b], axis=1), [away(2, 3), away(2, 3)]),
        # products
        "matmul": (lambda a, b: a @ b, [away(3, 4), away(4, 2)]),
        "matmul_batched_broadcast": (lambda a, b: a @ b, [away(2, 1, 3, 4), away(3, 4, 2)]),
        "matmul_vector_matrix": (lambda a, b: a @ b, [away(4), away(4, 3)]),
        "matmul_matrix_vector": (lambda a, b: a @ b, [away(2, 4), away(4)]),
        "matmul_vector_vector": (lambda a, b: a @ b, [away(4), away(4)]),
        "linear": (F.linear, [away(3, 4), away(5, 4), away(5)]),
        "linear_no_bias_3d": (F.linear, [away(2, 3, 4), away(5, 4)]),
        # convolution and pooling
        "conv2d": (F.conv2d, [away(2, 3, 5, 5), away(4, 3, 3, 3), away(4)]),
        "conv2d_stride_pad": (lambda x, w: F.conv2d(x, w, stride=2, padding=1), [away(2, 2, 6, 5), away(3, 2, 3, 3)]),
        "conv2d_dilation": (lambda x, w: F.conv2d(x, w, dilation=2, padding=(1, 2)), [away(1, 2, 6, 6), away(2, 2, 2, 3)]),
        "conv2d_same": (lambda x, w: F.conv2d(x, w, padding="same"), [away(1, 2, 4, 5), away(2, 2, 2, 2)]),
        "max_pool2d": (lambda x: F.max_pool2d(x, 2), [distinct(2, 2, 4, 6)]),
        "max_pool2d_odd_input": (lambda x: F.max_pool2d(x, 2), [distinct(1, 2, 5, 5)]),
        "max_pool2d_overlap_pad": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [distinct(1, 2, 5, 6)]),
        "max_pool2d_stride_gaps": (lambda x: F.max_pool2d(x, 2, stride=3), [distinct(2, 2, 7, 8)]),
        "max_pool2d_dilation_holes": (lambda x: F.max_pool2d(x, 2, stride=3, dilation=2), [distinct(1, 2, 8, 7)]),
        "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), [away(2, 2, 4, 4)]),
        "avg_pool2d_pad_exclude": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
                                   [away(1, 2, 5, 5)]),
        "avg_pool2d_ceil_mode": (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), [away(1, 2, 6, 5)]),
        "avg_pool2d_divisor_override": (lambda x: F.avg_pool2d(x, 2, divisor_override=3), [away(1, 1, 4, 4)]),
        "max_pool2d_ceil_mode": (lambda x: F.max_pool2d(x, 2, ceil_mode=True), [distinct(1, 2, 5, 5)]),
        # normalisation and lookup
        "batch_norm_train_2d": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                                [away(6, 3), positive(3), away(3)]),
        "batch_norm_train_4d": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                                [away(3, 2, 3, 2), positive(2), away(2)]),
        "batch_norm_eval": (lambda x, w, b: F.batch_norm(x, running_mean, running_var, w, b, training=False),
                            [away(3, 2, 2, 2), positive(2), away(2)]),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (3, 2), w, b), [away(4, 3, 2), positive(3, 2), away(3, 2)]),
        "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [away(2, 2, 5, 7)]),
        "embedding": (lambda w: F.embedding(tokens, w), [away(5, 3)]),
        # recurrent layers (time-major): the fused kernels with hand-written backward
        "rnn": (lambda x, h, wi, wh, bi, bh: _recurrence(F.rnn, x, h, wi, wh, bi, bh),
                [away(3, 2, 3), away(2, 2), away(2, 3), away(2, 2), away(2), away(2)]),
        "rnn_relu_reverse": (lambda x, wi, wh: _recurrence(F.rnn, x, None, wi, wh, nonlinearity="relu", reverse=True),
                             [away(3, 2, 3), away(2, 3), away(2, 2)]),
        "lstm": (lambda x, h, c, wi, wh, bi, bh: _recurrence(F.lstm, x, h, c, wi, wh, bi, bh),
                 [away(3, 2, 3), away(2, 2), away(2, 2), away(8, 3), away(8, 2), away(8), away(8)]),
        "lstm_reverse": (lambda x, wi, wh: _recurrence(F.lstm, x, None, None, wi, wh, reverse=True),
                         [away(4, 2, 3), away(8, 3), away(8, 2)]),
        "gru": (lambda x, h, wi, wh, bi, bh: _recurrence(F.gru, x, h, wi, wh, bi, bh),
                [away(3, 2, 3), away(2, 2), away(6, 3), away(6, 2), away(6), away(6)]),
        "gru_reverse": (lambda x, wi, wh: _recurrence(F.gru, x, None, wi, wh, reverse=True),
                        [away(3, 2, 3), away(6, 3), away(6, 2)]),
        # losses
        "cross_entropy": (lambda x: F.cross_entropy(x, labels), [away(6, 5) * 3]),
        "cross_entropy_sum": (lambda x: F.cross_entropy(x, labels, reduction="sum"), [away(6, 5)]),
        "cross_entropy_none": (lambda x: F.cross_entropy(x, labels, reduction="none"), [away(6, 5)]),
        "cross_entropy_ignore": (lambda x: F.cross_entropy(x, labels_ignored), [away(6, 5)]),
        "cross_entropy_ignore_a_class": (lambda x: F.cross_entropy(x, labels, ignore_index=int(labels_host[0])),
                                         [away(6, 5)]),
        "cross_entropy_ignore_smoothing": (lambda x: F.cross_entropy(x, labels_ignored, label_smoothing=0.3,
                                                                     reduction="none"), [away(6, 5)]),
        "cross_entropy_smoothing": (lambda x: F.cross_entropy(x, labels, label_smoothing=0.2), [away(6, 5)]),
        "cross_entropy_probs": (lambda x: F.cross_entropy(x, soft_targets, label_smoothing=0.1), [away(6, 5)]),
        "cross_entropy_spatial": (lambda x: F.cross_entropy(x, labels_2d), [away(3, 4, 5)]),
        "cross_entropy_weight": (lambda x: F.cross_entropy(x, labels, class_weight), [away(6, 5)]),
        "cross_entropy_weight_ignore_smoothing": (lambda x: F.cross_entropy(x, labels_ignored, class_weight,
                                                                            label_smoothing=0.2), [away(6, 5)]),
        "cross_entropy_weight_none": (lambda x: F.cross_entropy(x, labels_ignored, class_weight, reduction="none",
                                                                label_smoothing=0.1), [away(6, 5)]),
        "cross_entropy_weight_spatial": (lambda x: F.cross_entropy(x, labels_2d, class_weight[:4]), [away(3, 4, 5)]),
        "cross_entropy_weight_probs": (lambda x: F.cross_entropy(x, soft_targets, class_weight, label_smoothing=0.1),
                                       [away(6, 5)]),
        "nll_loss": (lambda x: F.nll_loss(F.log_softmax(x, axis=1), labels_ignored), [away(6, 5)]),
        "nll_loss_weight": (lambda x: F.nll_loss(F.log_softmax(x, dim=1), labels_ignored, class_weight), [away(6, 5)]),
        "nll_loss_weight_sum": (lambda x: F.nll_loss(x, labels, class_weight, reduction="sum"), [away(6, 5)]),
        "nll_loss_none": (lambda x: F.nll_loss(x, labels, reduction="none"), [away(6, 5)]),
        "mse_loss": (F.mse_loss, [away(4, 3), away(4, 3)]),
        "mse_loss_none": (lambda a, b: F.mse_loss(a, b, reduction="none"), [away(4, 3), away(4, 3)]),
        "l1_loss": (lambda a, b: F.l1_loss(a, b, reduction="sum"), [away(4, 3), away(4, 3) * 0.1]),
        "bce": (lambda p: F.binary_cross_entropy(p, bits), [probabilities]),
        "bce_with_logits": (lambda x: F.binary_cross_entropy_with_logits(x, bits), [away(4, 3) * 5]),
        "bce_weight": (lambda p: F.binary_cross_entropy(p, bits, element_weight[0]), [probabilities.copy()]),
        "bce_with_logits_weights": (lambda x: F.binary_cross_entropy_with_logits(x, bits, element_weight[:, :1],
                                                                                 pos_weight=element_weight[1]),
                                    [away(4, 3) * 3]),
    }


CASES = build_cases()
NONCONTIGUOUS = ["add_broadcast_both", "mul", "matmul", "linear", "conv2d", "max_pool2d", "batch_norm_train_4d",
                 "softmax", "cross_entropy", "transpose", "slice"]
