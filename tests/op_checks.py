"""One case of the op table checked on a device: its gradient by finite differences, its values against NumPy's.

Shared by tests/test_gpu.py and scripts/gpu_check.py (which runs where pytest may not be).
``device`` None means the host (NumPy), which is also what the simulated device computes on.
"""

import functools

import numpy as np

import distdl as dl
from distdl import backend
from gradcheck import gradcheck
from op_table import build_cases

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}  # the bounds for a device against NumPy


@functools.lru_cache(maxsize=None)
def cases_on(device, dtype="float64"):
    """The op table with its float constants cast to ``dtype`` and every constant placed on ``device``."""
    def put(array):
        if array.dtype.kind == "f":
            array = array.astype(dtype)
        return backend.as_array(array, device=device)

    return build_cases(put)


def check_gradient(name, device, noncontig=False):
    """Finite differences in float64 of the op run on ``device`` (on Fortran-order or strided inputs if asked)."""
    fn, inputs = cases_on(device)[name]
    gradcheck(fn, *inputs, device=device, noncontig=noncontig)


def _forward_backward(fn, inputs, device, dtype):
    """The op's value and every input's gradient (for a fixed random output weight), as host arrays."""
    tensors = [dl.tensor(np.asarray(a, dtype), requires_grad=True, device=device) for a in inputs]
    out = fn(*tensors)
    weights = np.random.default_rng(0).standard_normal(out.shape).astype(dtype)
    out.backward(backend.as_array(weights, device=device))
    where = backend.device_of(out.data)
    for i, t in enumerate(tensors):
        assert backend.device_of(t.grad) == where, f"gradient of input {i} on {backend.device_of(t.grad)}, not {where}"
    return where, [out.numpy()] + [backend.to_device(t.grad, "cpu") for t in tensors]


def check_against_numpy(name, device, dtype):
    """The op's value and gradients on ``device`` equal NumPy's to the issue's tolerance for ``dtype``."""
    dtype = np.dtype(dtype).name
    tol = TOLERANCE[dtype]
    _, expected = _forward_backward(*cases_on(None, dtype)[name], None, dtype)
    where, got = _forward_backward(*cases_on(device, dtype)[name], device, dtype)
    wanted = backend.parse_device(device)[0]
    assert where.startswith(wanted), f"{name} ran on {where}, not on {wanted}"
    for i, (g, e) in enumerate(zip(got, expected)):
        label = "value" if i == 0 else f"gradient of input {i - 1}"
        assert g.dtype == e.dtype, f"{name}: {label} is {g.dtype} on {where}, {e.dtype} on NumPy"
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=f"{name} in {dtype}: {label} on {where}")
