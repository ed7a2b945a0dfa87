"""Dispatch on CuPy arrays without a GPU: arrays on unowned host memory, so no kernel and no driver is needed.

Where CuPy is installed (``/tmp/gpuvenv/bin/python -m pytest tests/test_cupy_dispatch.py``)
the module and the checkpoint's tree walk are checked on real ``cupy.ndarray`` objects;
without CuPy the module is skipped. The tests at the end also need a GPU.
"""

import subprocess
import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="needs CuPy (a GPU is not needed)")

import distdl as dl  # noqa: E402
from distdl import backend  # noqa: E402
from distdl.checkpoint import tree  # noqa: E402

_keep = []  # host buffers under the CuPy arrays of this module: they must outlive the arrays


def unowned(shape, dtype=np.float32, device=0):
    """A CuPy array whose memory is a NumPy buffer, made without touching the driver (explicit device id)."""
    host = np.zeros(shape, dtype)
    _keep.append(host)
    memory = cupy.cuda.UnownedMemory(host.ctypes.data, max(host.nbytes, 1), host, device_id=device)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def test_the_array_module_device_and_type_of_a_cupy_array():
    a, b = unowned((3, 4)), unowned((2,), np.float16, device=1)
    assert backend.xp_of(a) is cupy and backend.is_gpu_array(a)
    assert backend.device_of(a) == "cuda:0" and backend.device_of(b) == "cuda:1"
    assert backend.xp_of(np.zeros(2)) is np and not backend.is_gpu_array(np.zeros(2))
    assert not backend.is_gpu_array(a.data) and backend.xp_of(a.data) is np  # a MemoryPointer is no array
    assert backend.to_device(b, "cuda:1") is b  # already there: no copy
    t = dl.tensor(a)
    assert t.data is a and t.device == "cuda:0" and t.shape == (3, 4) and t.dtype == np.float32


def test_a_cupy_array_made_before_distdl_imported_cupy_is_seen_as_one():
    probe = ("import numpy as np, cupy\n"
             "h = np.zeros(3, np.float32)\n"
             "m = cupy.cuda.UnownedMemory(h.ctypes.data, h.nbytes, h, device_id=2)\n"
             "a = cupy.ndarray((3,), np.float32, memptr=cupy.cuda.MemoryPointer(m, 0))\n"
             "from distdl import backend\n"
             "assert backend._cupy is None\n"
             "print(backend.xp_of(a).__name__, backend.is_gpu_array(a), backend.device_of(a))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["cupy", "True", "cuda:2"], out.stderr


def test_the_checkpoint_tree_walk_collects_cupy_arrays_not_memory_pointers():
    weight, bias, step = unowned((4, 3)), unowned((4,)), unowned((), np.int64)
    state = {"model": {"0.weight": weight, "0.bias": dl.tensor(bias)},
             "state": [{"step": step, "host": np.ones(2), "lr": 0.1, "betas": (0.9, 0.99)}]}
    arrays = {}
    skeleton = tree.split(state, "optimizer", arrays)
    assert list(arrays) == ["optimizer/model/0.weight", "optimizer/model/0.bias", "optimizer/state/0/step",
                            "optimizer/state/0/host"]
    assert arrays["optimizer/model/0.weight"] is weight and arrays["optimizer/model/0.bias"] is bias
    assert arrays["optimizer/state/0/step"] is step
    assert all(isinstance(a, (cupy.ndarray, np.ndarray)) and a.dtype != object for a in arrays.values())
    assert skeleton == {"model": {"0.weight": {"__array__": "optimizer/model/0.weight"},
                                  "0.bias": {"__array__": "optimizer/model/0.bias"}},
                        "state": [{"step": {"__array__": "optimizer/state/0/step"},
                                   "host": {"__array__": "optimizer/state/0/host"}, "lr": 0.1, "betas": [0.9, 0.99]}]}
    assert tree.join(skeleton, arrays)["model"]["0.weight"] is weight


def test_device_arrays_are_packed_per_device_and_dtype_within_the_limit():
    arrays = [unowned((10,)), np.zeros(3), unowned((5,), np.float16), unowned((20,)), unowned((4,), device=1),
              unowned((30,)), unowned((2,), np.float16), unowned((1,))]
    # float32 on device 0 (bytes): 40, 80, 120, 4; limit 128: [40, 80] then [120, 4]
    assert backend.pack_plan(arrays, limit=128) == [[0, 3], [2, 6], [4], [5, 7]]
    assert backend.pack_plan(arrays) == [[0, 3, 5, 7], [2, 6], [4]]
    assert backend.pack_plan([np.zeros(3), 1.0]) == []


needs_gpu = pytest.mark.skipif(not dl.gpu_available(), reason="launches kernels: needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_scatter_add_moves_host_indices_to_the_targets_device():
    target = cupy.zeros((4, 2))
    backend.scatter_add(target, np.array([1, 1, 3]), cupy.ones((3, 2)))
    backend.scatter_add(target, (np.array([0, 0]), slice(None)), np.full((2, 2), 0.5))
    np.testing.assert_array_equal(target.get(), [[1, 1], [2, 2], [0, 0], [1, 1]])


@pytest.mark.gpu
@needs_gpu
def test_numpy_and_cupy_draw_the_same_numbers_from_the_same_state():
    state = {"generator": "splitmix64", "seed": 77, "counter": 5}
    results = {}
    for xp in (np, cupy):
        backend.set_rng_state(state)
        draws = (backend.keep_mask((33, 7), 0.3, xp), backend.random((5, 3), np.float32, xp),
                 backend.random((9,), np.float64, xp), backend.normal((11,), np.float64, xp, scale=2.0))
        assert all(backend.xp_of(d) is xp for d in draws)
        results[xp] = [cupy.asnumpy(d) for d in draws]
    for a, b in zip(results[np][:3], results[cupy][:3]):  # integer work: bit for bit
        np.testing.assert_array_equal(b, a)
    np.testing.assert_allclose(results[cupy][3], results[np][3], rtol=1e-12)  # log, cos, sin: last-bit freedom


@pytest.mark.gpu
@needs_gpu
def test_a_gpu_checkpoint_loads_on_the_host_and_back_onto_the_gpu(tmp_path):
    dl.seed(0)
    model = dl.nn.Sequential(dl.nn.Linear(5, 7), dl.nn.BatchNorm1d(7), dl.nn.Linear(7, 2)).to("cuda")
    optimizer = dl.optim.Adam(model.parameters(), lr=0.01)
    x, y = (dl.tensor(np.ones(shape, np.float32), device="cuda") for shape in [(4, 5), (4, 2)])
    dl.nn.MSELoss()(model(x), y).backward()
    optimizer.step()
    path = tmp_path / "gpu.npz"
    dl.save_checkpoint(path, model=model, optimizer=optimizer, table=cupy.arange(3.0))
    saved = {k: cupy.asnumpy(v) for k, v in model.state_dict().items()}
    on_host = dl.nn.Sequential(dl.nn.Linear(5, 7), dl.nn.BatchNorm1d(7), dl.nn.Linear(7, 2))
    extra = dl.load_checkpoint(path, model=on_host)
    assert type(extra["table"]) is np.ndarray
    for key, value in saved.items():
        assert type(on_host.state_dict()[key]) is np.ndarray
        np.testing.assert_array_equal(on_host.state_dict()[key], value)
    back = dl.nn.Sequential(dl.nn.Linear(5, 7), dl.nn.BatchNorm1d(7), dl.nn.Linear(7, 2)).to("cuda")
    extra = dl.load_checkpoint(path, model=back, optimizer=dl.optim.Adam(back.parameters()), map_location="cuda")
    assert backend.is_gpu_array(extra["table"])
    for key, value in saved.items():
        np.testing.assert_array_equal(cupy.asnumpy(back.state_dict()[key]), value)


def test_nccl_detection_imports_cupys_nccl_submodule():
    """``import cupy`` does not load ``cupy.cuda.nccl``: asked as an attribute in a fresh process, the binding is
    missing, and ``auto`` would never choose NCCL. The detection must import it, and agree with its ``available``."""
    probe = ("import sys; from distdl.parallel import device_allreduce as da; found = da.nccl_available(); "
             "assert 'cupy.cuda.nccl' in sys.modules, 'the NCCL binding was never imported'; "
             "import cupy.cuda.nccl as nccl; assert found == nccl.available, (found, nccl.available)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(backend.gpu_count() > 0, reason="a GPU is here: the no-GPU message cannot be seen")
@pytest.mark.parametrize("ask", [lambda: dl.nn.Linear(3, 2).to("cuda"), lambda: dl.device.get("cuda"),
                                 lambda: dl.tensor([1.0], device="cuda:0")])
def test_asking_for_a_gpu_that_cupy_cannot_see_says_what_to_check(ask):
    """CuPy without a driver: what to check and how to stay on the CPU, not CUDA's 'driver version is insufficient'."""
    with pytest.raises(RuntimeError, match=r"CuPy sees none; check the driver \(nvidia-smi\) and CUDA_VISIBLE_DEVICES"):
        ask()
