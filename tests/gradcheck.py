"""Gradient checking against central finite differences in float64."""

import numpy as np

import distdl as dl
from distdl import backend


def noncontiguous(a):
    """The same values as ``a`` in a non-contiguous (Fortran-order or strided) array."""
    if a.ndim >= 2:
        return np.asfortranarray(a)
    if a.ndim == 1:
        wide = np.zeros(2 * a.size, a.dtype)
        wide[::2] = a
        return wide[::2]
    return a


def _compare(label, analytic, shape, objective_at, rng, eps, rtol, atol, max_full, directions):
    """Analytic gradient against central differences of ``objective_at(step)`` (the objective at value + step).

    At most ``max_full`` elements are checked element by element, larger arrays along
    random directions (a directional derivative).
    """
    assert analytic is not None, f"{label} received no gradient"
    assert analytic.shape == shape and analytic.dtype == np.float64, f"{label}: {analytic.shape} {analytic.dtype}"

    def difference(step):
        return (objective_at(step) - objective_at(-step)) / (2 * eps)

    size = int(np.prod(shape))
    if size <= max_full:
        numeric = np.zeros(shape)
        for idx in np.ndindex(shape):
            step = np.zeros(shape)
            step[idx] = eps
            numeric[idx] = difference(step)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"gradient of {label}")
    else:
        for _ in range(directions):
            v = rng.standard_normal(shape)
            np.testing.assert_allclose((analytic * v).sum(), difference(eps * v), rtol=rtol, atol=atol * size,
                                       err_msg=f"directional derivative of {label}")


def _host(array):
    return None if array is None else backend.to_device(array, "cpu")


def gradcheck(fn, *arrays, eps=1e-6, rtol=1e-5, atol=1e-7, max_full=150, directions=4, noncontig=False, seed=0,
              device=None):
    """Check the analytic gradient of ``sum(fn(*inputs) * w)`` (w random) for every input.

    ``device`` ("cuda", "cuda:N") runs the op there; the differences are taken on the host values.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    tensors = [dl.tensor(noncontiguous(a) if noncontig else a, requires_grad=True, device=device) for a in arrays]
    out = fn(*tensors)
    weights = backend.as_array(rng.standard_normal(out.shape), device=device)
    out.backward(weights)

    for i, a in enumerate(arrays):
        def objective_at(step, i=i):
            values = [v + step if j == i else v for j, v in enumerate(arrays)]
            with dl.no_grad():
                return float((fn(*[dl.tensor(v, device=device) for v in values]).data * weights).sum())

        _compare(f"input {i}", _host(tensors[i].grad), a.shape, objective_at, rng, eps, rtol, atol, max_full, directions)


def module_gradcheck(module, *arrays, eps=1e-6, rtol=1e-5, atol=1e-7, max_full=60, directions=4, seed=0):
    """Check the gradients of ``sum(module(*inputs) * w)`` for every float input and every parameter.

    The module must be float64 and deterministic (no dropout); parameters are perturbed in place.
    """
    rng = np.random.default_rng(seed)
    tensors = [dl.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    module.zero_grad()
    out = module(*tensors)
    weights = rng.standard_normal(out.shape)
    out.backward(weights)

    def objective():
        with dl.no_grad():
            return float((module(*[dl.tensor(a) for a in arrays]).data * weights).sum())

    targets = [(f"input {i}", t.grad, t.data) for i, t in enumerate(tensors) if t.requires_grad]
    targets += [(name, p.grad, p.data) for name, p in module.named_parameters()]
    for label, analytic, value in targets:
        original = value.copy()

        def objective_at(step, value=value, original=original):
            value[...] = original + step
            result = objective()
            value[...] = original
            return result

        _compare(label, analytic, value.shape, objective_at, rng, eps, rtol, atol, max_full, directions)
