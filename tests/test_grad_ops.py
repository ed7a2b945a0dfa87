"""Every op's gradient against central finite differences in float64: one case per line of tests/op_table.py."""

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from gradcheck import gradcheck
from op_table import CASES, NONCONTIGUOUS, Draws

draw = Draws(np.random.default_rng(4321))  # for the cases below the table
tokens = np.array([[1, 3, 3], [0, 1, 4]])


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient(name):
    fn, inputs = CASES[name]
    gradcheck(fn, *inputs)


@pytest.mark.parametrize("name", NONCONTIGUOUS)
def test_gradient_noncontiguous_inputs(name):
    fn, inputs = CASES[name]
    gradcheck(fn, *inputs, noncontig=True)


def test_gradient_large_input_by_directional_derivative():
    gradcheck(lambda x, w: F.relu(F.conv2d(x, w, padding=1)).sum(), draw.away(4, 3, 8, 8), draw.away(6, 3, 3, 3))


def test_embedding_padding_row_gets_no_gradient():
    weight = dl.tensor(draw.away(5, 3), requires_grad=True)
    F.embedding(tokens, weight, padding_idx=1).sum().backward()
    expected = np.zeros((5, 3))
    np.add.at(expected, tokens.ravel(), 1.0)
    expected[1] = 0
    np.testing.assert_array_equal(weight.grad, expected)
