"""Bad input gets a clear error that says what was wrong and what to do."""

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F


def t(*shape, dtype=np.float32, requires_grad=False):
    return dl.tensor(np.ones(shape, dtype), requires_grad=requires_grad)


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 6\)"):
        t(3, 4) @ t(5, 6)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(t(2, 3), t(4, 5))


def test_conv_channel_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\) has 3 channels.*\(4, 2, 3, 3\) expects 2"):
        F.conv2d(t(1, 3, 8, 8), t(4, 2, 3, 3))
    with pytest.raises(ValueError, match="4-d NCHW"):
        F.conv2d(t(3, 8, 8), t(4, 3, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.conv2d(t(1, 1, 2, 2), t(1, 1, 3, 3))


def test_backward_of_non_scalar_says_what_to_pass():
    x = t(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(3, 4\) needs a gradient: pass grad="):
        (x * 2).backward()


def test_backward_without_any_grad_input():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (t(2) * 2).sum().backward()


def test_float_and_integer_tensors_say_what_to_cast():
    with pytest.raises(TypeError, match=r"float32 and int64.*astype"):
        t(3) + dl.tensor(np.arange(3))
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        dl.tensor(np.arange(3), requires_grad=True)


def test_loss_target_errors():
    logits = t(4, 3)
    with pytest.raises(ValueError, match=r"class-index targets of shape \(4,\), got \(4, 1\)"):
        F.cross_entropy(logits, np.zeros((4, 1), np.int64))
    with pytest.raises(IndexError, match=r"\[0, 3\).*to 7"):
        F.cross_entropy(logits, np.array([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"input shape \(4, 1\) and target shape \(4,\) differ"):
        F.mse_loss(t(4, 1), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits"):
        F.binary_cross_entropy(dl.tensor(np.array([2.0])), np.array([1.0]))
    with pytest.raises(ValueError, match="reduction must be"):
        F.cross_entropy(logits, np.zeros(4, np.int64), reduction="avg")


def test_embedding_index_out_of_range():
    with pytest.raises(IndexError, match=r"\[0, 5\).*to 9"):
        F.embedding(np.array([0, 9]), t(5, 2))
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0, 1.0]), t(5, 2))


def test_other_argument_errors():
    with pytest.raises(ValueError, match="probability p"):
        F.dropout(t(3), p=1.5)
    with pytest.raises(ValueError, match="not a permutation"):
        t(2, 3).permute(0, 0)
    with pytest.raises(ValueError, match="out of range"):
        t(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="only groups=1"):
        F.conv2d(t(1, 2, 4, 4), t(2, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="unknown device"):
        t(2).to("tpu")
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t(2))
