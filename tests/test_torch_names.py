"""Where a name is torch's it means what torch means; NumPy's names are aliases (README "Naming contract").

Each behaviour is checked against a NumPy reference written out here, and against
torch itself where it is installed (those tests skip without it).
"""

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from distdl import nn
from gradcheck import gradcheck

rng = np.random.default_rng(7)
x3 = rng.standard_normal((2, 3, 4))


def t(a):
    return dl.tensor(a)


def test_transpose_swaps_two_dimensions():
    m = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(t(m).transpose(0, 1).numpy(), m.T)  # the issue: this used to return m unchanged
    np.testing.assert_array_equal(t(x3).transpose(0, 2).numpy(), np.swapaxes(x3, 0, 2))
    np.testing.assert_array_equal(t(x3).transpose(-1, 1).numpy(), np.swapaxes(x3, -1, 1))
    np.testing.assert_array_equal(t(x3).transpose(dim0=1, dim1=2).numpy(), np.swapaxes(x3, 1, 2))
    np.testing.assert_array_equal(F.transpose(t(x3), 1, 0).numpy(), np.swapaxes(x3, 1, 0))
    np.testing.assert_array_equal(t(x3).transpose(1, 1).numpy(), x3)


def test_permute_reorders_all_dimensions_and_T_reverses_them():
    np.testing.assert_array_equal(t(x3).permute(2, 0, 1).numpy(), x3.transpose(2, 0, 1))
    np.testing.assert_array_equal(t(x3).permute((1, 2, 0)).numpy(), x3.transpose(1, 2, 0))
    np.testing.assert_array_equal(F.permute(t(x3), (-1, 0, 1)).numpy(), x3.transpose(2, 0, 1))
    np.testing.assert_array_equal(t(x3).T.numpy(), x3.T)
    gradcheck(lambda a: a.transpose(0, 2), x3)


@pytest.mark.parametrize("args", [(), (0,), (2, 0, 1), ((1, 0),)])
def test_transpose_with_numpys_permutation_arguments_says_use_permute(args):
    with pytest.raises(TypeError, match=r"swaps two dimensions.*use permute"):
        t(x3).transpose(*args)


def test_size_is_the_shape_when_called_and_the_count_as_an_attribute():
    a = t(x3)
    assert a.size() == (2, 3, 4) and a.size(0) == 2 and a.size(-1) == 4
    assert a.size == 24 and a.size * 2 == 48 and a.numel() == 24  # NumPy's attribute still counts
    assert a.dim() == a.ndim == 3
    with pytest.raises(IndexError, match=r"size\(3\).*\[-3, 2\]"):
        a.size(3)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_dim_and_keepdim_match_numpys_axis_and_keepdims(name):
    reference = getattr(np, name)
    for dim in (None, 0, -1, (0, 2)):
        for keep in (False, True):
            by_torch_name = getattr(t(x3), name)(dim=dim, keepdim=keep)
            values = by_torch_name.values if isinstance(by_torch_name, tuple) else by_torch_name
            np.testing.assert_allclose(values.numpy(), reference(x3, axis=dim, keepdims=keep), rtol=1e-12)
            by_numpy_name = getattr(F, name)(t(x3), axis=dim, keepdims=keep)
            np.testing.assert_allclose(by_numpy_name.numpy(), reference(x3, axis=dim, keepdims=keep), rtol=1e-12)


def test_max_and_min_along_a_dim_give_values_and_indices_as_torch():
    for name in ("max", "min"):
        values, indices = getattr(t(x3), name)(1)
        np.testing.assert_array_equal(values.numpy(), getattr(np, name)(x3, axis=1))
        np.testing.assert_array_equal(indices.numpy(), getattr(np, "arg" + name)(x3, axis=1))
        kept = getattr(t(x3), name)(dim=-1, keepdim=True)
        assert kept.values.shape == kept.indices.shape == (2, 3, 1) and kept.indices.dtype == np.int64
    assert isinstance(t(x3).max(axis=1), dl.Tensor)  # NumPy's spelling, NumPy's answer: the values


def test_argmax_and_argmin_with_dim_keepdim_and_over_all_elements():
    np.testing.assert_array_equal(t(x3).argmax(dim=2).numpy(), x3.argmax(axis=2))
    np.testing.assert_array_equal(t(x3).argmin(1, keepdim=True).numpy(), x3.argmin(axis=1, keepdims=True))
    assert t(x3).argmax().item() == x3.argmax() and F.argmin(t(x3), axis=0).shape == (3, 4)


def test_var_is_unbiased_by_torch_name_and_biased_by_numpy_name():
    np.testing.assert_allclose(t(x3).var().item(), np.var(x3, ddof=1))
    np.testing.assert_allclose(t(x3).var(1).numpy(), np.var(x3, axis=1, ddof=1))
    np.testing.assert_allclose(t(x3).var(dim=1, correction=0).numpy(), np.var(x3, axis=1))
    np.testing.assert_allclose(t(x3).var(axis=1).numpy(), np.var(x3, axis=1))
    np.testing.assert_allclose(t(x3).var(axis=1, ddof=1).numpy(), np.var(x3, axis=1, ddof=1))


def test_softmax_takes_dim_in_functions_methods_and_layers():
    e = np.exp(x3 - x3.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    for out in (F.softmax(t(x3), dim=1), F.softmax(t(x3), axis=1), t(x3).softmax(1), nn.Softmax(dim=1)(t(x3)),
                nn.Softmax(axis=1)(t(x3))):
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(nn.LogSoftmax(dim=1)(t(x3)).numpy(), np.log(expected), rtol=1e-12)
    np.testing.assert_allclose(t(x3).log_softmax(dim=0).numpy(), F.log_softmax(t(x3), axis=0).numpy())
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    with pytest.raises(TypeError, match=r"dim=None .* give the dimension"):
        nn.Softmax(dim=None)(t(x3))


def test_cat_stack_squeeze_unsqueeze_take_dim():
    a, b = t(x3), t(x3 + 1)
    np.testing.assert_array_equal(F.cat([a, b], dim=1).numpy(), np.concatenate([x3, x3 + 1], axis=1))
    np.testing.assert_array_equal(dl.cat([a, b], 2).numpy(), np.concatenate([x3, x3 + 1], axis=2))
    np.testing.assert_array_equal(F.concatenate([a, b], axis=0).numpy(), np.concatenate([x3, x3 + 1], axis=0))
    np.testing.assert_array_equal(F.stack([a, b], dim=-1).numpy(), np.stack([x3, x3 + 1], axis=-1))
    assert a.unsqueeze(dim=1).shape == (2, 1, 3, 4) and a.unsqueeze(-1).shape == (2, 3, 4, 1)
    ones = t(np.zeros((1, 3, 1)))
    assert ones.squeeze().shape == (3,) and ones.squeeze(dim=2).shape == (1, 3)
    assert ones.squeeze(1).shape == (1, 3, 1)  # torch: squeezing a dimension that is not 1 leaves it


@pytest.mark.parametrize("call", [
    lambda a: a.sum(dim=0, axis=0),
    lambda a: a.mean(1, keepdim=True, keepdims=True),
    lambda a: F.softmax(a, dim=0, axis=1),
    lambda a: a.var(correction=1, ddof=0),
    lambda a: F.cat([a, a], dim=1, axis=1),
    lambda a: nn.Softmax(dim=0, axis=0),
])
def test_both_names_of_one_argument_is_an_error(call):
    with pytest.raises(TypeError, match="both .* give only one"):
        call(t(x3))


def test_view_never_copies_as_torch():
    a = t(np.arange(6.0).reshape(2, 3))
    v = a.view(3, 2)
    assert np.shares_memory(v.data, a.data)
    with pytest.raises(RuntimeError, match=r"without copying; use \.reshape"):
        a.T.view(6)
    np.testing.assert_array_equal(a.T.reshape(6).numpy(), a.numpy().T.reshape(6))


def test_against_torch_itself():
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x3)
    pairs = [
        (t(x3).transpose(0, 1), tx.transpose(0, 1)), (t(x3).permute(2, 0, 1), tx.permute(2, 0, 1)),
        (t(x3).sum(dim=1, keepdim=True), tx.sum(dim=1, keepdim=True)), (t(x3).var(), tx.var()),
        (t(x3).var(0), tx.var(0)), (t(x3).max(dim=2).indices, tx.max(dim=2).indices),
        (F.softmax(t(x3), dim=1), torch.softmax(tx, dim=1)), (t(x3).argmax(), tx.argmax()),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)
    assert t(x3).size() == tuple(tx.size()) and t(x3).size(1) == tx.size(1) and t(x3).numel() == tx.numel()
