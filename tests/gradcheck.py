"""Gradient checking against central finite differences in float64."""

import numpy as np

import distdl as dl


def noncontiguous(a):
    """The same values as ``a`` in a non-contiguous (Fortran-order or strided) array."""
    if a.ndim >= 2:
        return np.asfortranarray(a)
    if a.ndim == 1:
        wide = np.zeros(2 * a.size, a.dtype)
        wide[::2] = a
        return wide[::2]
    return a


def gradcheck(fn, *arrays, eps=1e-6, rtol=1e-5, atol=1e-7, max_full=150, directions=4, noncontig=False, seed=0):
    """Check the analytic gradient of ``sum(fn(*inputs) * w)`` (w random) for every input.

    Inputs with at most ``max_full`` elements are checked element by element,
    larger ones along random directions (a directional derivative).
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    tensors = [dl.tensor(noncontiguous(a) if noncontig else a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    weights = rng.standard_normal(out.shape)
    out.backward(weights)

    def objective(values):
        with dl.no_grad():
            return float((fn(*[dl.tensor(v) for v in values]).data * weights).sum())

    def difference(i, step):
        plus = [a + step if j == i else a for j, a in enumerate(arrays)]
        minus = [a - step if j == i else a for j, a in enumerate(arrays)]
        return (objective(plus) - objective(minus)) / (2 * eps)

    for i, a in enumerate(arrays):
        analytic = tensors[i].grad
        assert analytic is not None, f"input {i} received no gradient"
        assert analytic.shape == a.shape and analytic.dtype == np.float64
        if a.size <= max_full:
            numeric = np.zeros_like(a)
            for idx in np.ndindex(a.shape):
                step = np.zeros_like(a)
                step[idx] = eps
                numeric[idx] = difference(i, step)
            np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
        else:
            for _ in range(directions):
                v = rng.standard_normal(a.shape)
                numeric = difference(i, eps * v)
                np.testing.assert_allclose((analytic * v).sum(), numeric, rtol=rtol, atol=atol * a.size,
                                           err_msg=f"directional derivative of input {i}")
