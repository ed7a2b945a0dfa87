"""Array-module dispatch: NumPy on the CPU, CuPy on a GPU, chosen by where the data lives.

This is the only module that knows CuPy. It is imported lazily, the first time
a GPU is asked for, so distdl runs and is tested everywhere on NumPy alone.
Engine code asks ``xp = xp_of(array)`` and then calls only ``xp.*``.
"""

import contextlib
import functools
import numbers
import os
import warnings

import numpy as np

from distdl import rng
from distdl._allocator import tune_allocator

tune_allocator()  # before the first large array: see _allocator for why and how to opt out

_cupy = None  # the cupy module, once a GPU has been asked for
_default_dtype = np.dtype(np.float32)
_generator = rng.Generator()  # every engine draw, on NumPy and CuPy alike; dl.seed replaces it


def cupy():
    """Import CuPy on first use; without it, say what to install."""
    global _cupy
    if _cupy is None:
        try:
            import cupy as cp
        except ImportError as exc:
            raise RuntimeError(
                "a GPU was requested but CuPy is not installed: "
                "pip install 'distdl[gpu]' (in a checkout: pip install -e '.[gpu]'; or the cupy-cudaXXx wheel matching "
                "your CUDA)"
            ) from exc
        _cupy = cp
    return _cupy


@functools.cache
def nccl():
    """CuPy's NCCL binding, or None where CuPy finds no libnccl. ``cupy.cuda.nccl`` is a submodule that
    ``import cupy`` does not load: asked for as an attribute before anything imported it, it is missing.
    CuPy's warning that libnccl is absent is silenced: the device allreduce then says which path it took.
    Looked up once (``catch_warnings`` is not thread-safe: the communication thread must not run it per bucket)."""
    cupy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="\\s*nccl library could not be loaded")
        import cupy.cuda.nccl as binding

    return binding if binding.available else None


def gpu_count():
    """How many CUDA devices CuPy sees here; 0 without CuPy, a driver or a device."""
    try:
        return cupy().cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return 0


def cupy_with_a_gpu(requested):
    """CuPy, once it is known to see a GPU; else what to install, or what to check (never CUDA's raw error)."""
    cp = cupy()  # without CuPy: says what to install
    try:
        count, why = cp.cuda.runtime.getDeviceCount(), ""
    except Exception as exc:  # no driver, no device: CUDA's words, after what to do
        count, why = 0, f" (CUDA: {exc})"
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        raise RuntimeError(f"a GPU was asked for ({requested}) but CuPy sees none; check the driver (nvidia-smi) and "
                           f"CUDA_VISIBLE_DEVICES={visible}, or use the CPU (device='cpu', or unset DISTDL_DEVICE)"
                           + why)
    return cp


@contextlib.contextmanager
def sync_detector():
    """``cupyx.allow_synchronize(False)``: a host wait for the GPU inside raises. Deprecated since CuPy 10, it warns
    on entry (silenced here), and CuPy 14's ``ndarray.get`` no longer declares its wait, so it catches less there
    than in older CuPy."""
    cupy()
    import cupyx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="cupyx.allow_synchronize")
        detector = cupyx.allow_synchronize(False)
        detector.__enter__()
    try:
        yield
    finally:
        detector.__exit__(None, None, None)


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    return gpu_count() > 0


def xp_of(array):
    """The array module (numpy or cupy) that owns ``array``."""
    if type(array) is not np.ndarray and is_gpu_array(array):
        return _cupy
    return np


def is_gpu_array(array):
    """True for a CuPy array, even one made before distdl imported CuPy (then CuPy is imported here)."""
    if _cupy is None:
        if not type(array).__module__.startswith("cupy"):
            return False
        cupy()
    return isinstance(array, _cupy.ndarray)


def parse_device(device):
    """Normalise "cpu", "cuda", "cuda:1", "gpu" or an int to ("cpu", None) or ("cuda", index)."""
    if device is None or device == "cpu":
        return "cpu", None
    if isinstance(device, numbers.Integral):
        return "cuda", int(device)
    text = str(device)
    kind, _, index = text.partition(":")
    if kind in ("cuda", "gpu") and (not index or index.isdigit()):
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
    if index is None:
        index = cupy_with_a_gpu(f"device={device!r}").cuda.runtime.getDevice()
    if is_gpu_array(array) and array.device.id == index:
        return array
    cp = cupy_with_a_gpu(f"device={device!r}")
    with cp.cuda.Device(index):
        return cp.asarray(array)


PACK_BYTES = 1 << 30  # a pack of device arrays for one copy to the host: at most this much extra device memory


def pack_plan(arrays, limit=PACK_BYTES):
    """Which of ``arrays`` travel to the host together: lists of indices of GPU arrays of one device and dtype.

    Consecutive arrays of a group share a pack until it would exceed ``limit`` bytes
    (an array larger than that is a pack alone). Host arrays are in no pack.
    """
    open_packs, packs = {}, []
    for i, array in enumerate(arrays):
        if not is_gpu_array(array):
            continue
        key = (array.device.id, array.dtype)
        pack = open_packs.get(key)
        if pack is None or pack[1] + array.nbytes > limit:
            pack = open_packs[key] = [[], 0]
            packs.append(pack[0])
        pack[0].append(i)
        pack[1] += array.nbytes
    return packs


def gather_to_host(arrays, limit=PACK_BYTES):
    """NumPy arrays of ``arrays`` (a list): host arrays as they are; device arrays in one copy per pack.

    Each pack (``pack_plan``) is concatenated on its device, copied to the host in one
    transfer and split there into views of that one buffer: a few large copies instead
    of one small synchronous copy per parameter.
    """
    host = list(arrays)
    for pack in pack_plan(arrays, limit):
        members = [arrays[i] for i in pack]
        with _cupy.cuda.Device(members[0].device.id):
            flat = _cupy.concatenate([a.reshape(-1) for a in members]).get()
        parts = np.split(flat, np.cumsum([a.size for a in members])[:-1])
        for i, a, part in zip(pack, members, parts):
            host[i] = part.reshape(a.shape)
    return host


def as_array(data, dtype=None, device=None):
    """Turn user data into an array of the right module, dtype and device.

    Arrays keep their dtype (float64 stays float64, as NumPy and PyTorch do);
    Python numbers and lists of numbers become the default float dtype.
    """
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
    """Seed every random number the engine draws (init, dropout, transforms' keys), on CPU and GPU alike."""
    global _generator
    _generator = rng.Generator(value)


def rng_state():
    """The engine's RNG position, {"generator", "seed", "counter"}: plain JSON data (for checkpoints)."""
    return _generator.state()


def set_rng_state(state):
    """Go back to a position ``rng_state()`` returned; the next draws repeat the ones that followed it."""
    _generator.set_state(state)


def random(shape, dtype, xp=np):
    """Uniform [0, 1) samples of ``dtype`` made by ``xp`` (the same values on NumPy and CuPy)."""
    return _generator.uniform(shape, dtype, xp)


def normal(shape, dtype, xp=np, scale=1.0):
    """Normal samples of mean 0 and standard deviation ``scale``, made by ``xp``."""
    return _generator.normal(shape, dtype, xp, scale)


def keep_mask(shape, p, xp=np):
    """Booleans that are True with probability ``1 - p``: dropout's kept entries (``random(shape, float32) >= p``)."""
    return _generator.keep(shape, p, xp)


def scatter_add(target, indices, values):
    """``target[indices] += values`` where an index may repeat (np.add.at; cupyx.scatter_add on a GPU).

    On a GPU the index arrays and the values are moved to the target's device first
    (cupyx.scatter_add takes device arrays only; a NumPy batch's indices are host arrays).
    """
    if is_gpu_array(target):
        import cupyx

        device = device_of(target)
        parts = indices if isinstance(indices, tuple) else (indices,)
        parts = tuple(to_device(p, device) if isinstance(p, (np.ndarray, list)) or is_gpu_array(p) else p
                      for p in parts)
        cupyx.scatter_add(target, parts if isinstance(indices, tuple) else parts[0], to_device(values, device))
    else:
        np.add.at(target, indices, values)
