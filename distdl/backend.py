"""Array-module dispatch: NumPy on the CPU, CuPy on a GPU, chosen by where the data lives.

This is the only module that knows CuPy. It is imported lazily, the first time
a GPU is asked for, so distdl runs and is tested everywhere on NumPy alone.
Engine code asks ``xp = xp_of(array)`` and then calls only ``xp.*``.
"""

import numbers

import numpy as np

from distdl._allocator import tune_allocator

tune_allocator()  # before the first large array: see _allocator for why and how to opt out

_cupy = None  # the cupy module, once a GPU has been asked for
_default_dtype = np.dtype(np.float32)
_numpy_rng = np.random.default_rng()
_seed = None


def cupy():
    """Import CuPy on first use; without it, say what to install."""
    global _cupy
    if _cupy is None:
        try:
            import cupy as cp
        except ImportError as exc:
            raise RuntimeError(
                "a GPU was requested but CuPy is not installed: "
                "pip install 'distdl[gpu]' (or the cupy-cudaXXx wheel matching your CUDA)"
            ) from exc
        _cupy = cp
        if _seed is not None:
            cp.random.seed(_seed)
    return _cupy


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        return cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def xp_of(array):
    """The array module (numpy or cupy) that owns ``array``."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def is_gpu_array(array):
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def _foreign_gpu_array(data):
    """A CuPy array handed in by a user who imported CuPy before distdl did."""
    return type(data).__module__.startswith("cupy")


def parse_device(device):
    """Normalise "cpu", "cuda", "cuda:1", "gpu" or an int to ("cpu", None) or ("cuda", index)."""
    if device is None or device == "cpu":
        return "cpu", None
    if isinstance(device, numbers.Integral):
        return "cuda", int(device)
    text = str(device)
    kind, _, index = text.partition(":")
    if kind in ("cuda", "gpu"):
        return "cuda", int(index) if index else None
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def device_of(array):
    """'cpu' for NumPy arrays, 'cuda:N' for CuPy arrays."""
    if is_gpu_array(array):
        return f"cuda:{array.device.id}"
    return "cpu"


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return array.get() if is_gpu_array(array) else array
    cp = cupy()
    if index is None:
        index = cp.cuda.runtime.getDevice()
    if is_gpu_array(array) and array.device.id == index:
        return array
    with cp.cuda.Device(index):
        return cp.asarray(array)


def as_array(data, dtype=None, device=None):
    """Turn user data into an array of the right module, dtype and device.

    Arrays keep their dtype (float64 stays float64, as NumPy and PyTorch do);
    Python numbers and lists of numbers become the default float dtype.
    """
    if _foreign_gpu_array(data):
        cupy()
    if isinstance(data, np.ndarray) or is_gpu_array(data):
        array = data
    else:
        array = np.asarray(data)
        if array.dtype.kind in "iuf" and not isinstance(data, np.generic):
            array = array.astype(_default_dtype)
    if dtype is not None and array.dtype != np.dtype(dtype):
        array = array.astype(dtype)
    if device is not None:
        array = to_device(array, device)
    return array


def get_default_dtype():
    return _default_dtype


def set_default_dtype(dtype):
    """Set the float dtype of new layers and of tensors made from Python numbers."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


def seed(value):
    """Seed every random number the engine draws (init, dropout), on CPU and GPU."""
    global _numpy_rng, _seed
    _seed = int(value)
    _numpy_rng = np.random.default_rng(_seed)
    if _cupy is not None:
        _cupy.random.seed(_seed)


def rng_state():
    """The CPU generator's state as plain JSON-able data (for checkpoints)."""
    return _numpy_rng.bit_generator.state


def set_rng_state(state):
    _numpy_rng.bit_generator.state = state


def random(shape, dtype, xp=np):
    """Uniform [0, 1) samples of ``dtype`` from the seeded generator of ``xp``."""
    if xp is np:
        return _numpy_rng.random(shape, dtype=dtype)
    return xp.random.random(shape).astype(dtype, copy=False)


def normal(shape, dtype, xp=np, scale=1.0):
    if xp is np:
        return (_numpy_rng.standard_normal(shape, dtype=np.float64) * scale).astype(dtype)
    return (xp.random.standard_normal(shape) * scale).astype(dtype)


def scatter_add(target, indices, values):
    """``target[indices] += values`` where an index may repeat (np.add.at; cupyx.scatter_add on a GPU)."""
    if is_gpu_array(target):
        import cupyx

        cupyx.scatter_add(target, indices, values)
    else:
        np.add.at(target, indices, values)
