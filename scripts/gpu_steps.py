"""The steps of scripts/gpu_check.py, each ``step(simulate) -> (detail, figures)``; a failure raises.

On a GPU a step checks distdl's CUDA path against NumPy, finite differences or PyTorch; with
``simulate`` it runs the same code on the CPU against the simulated asynchronous device ("sim"), where
the engine computes on NumPy. ``STEPS`` lists them in order with their timeouts. gpu_check.py runs
each in a process of its own; importable without pytest.
"""

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# distdl from this checkout; the op table, the DDP worker and the benchmark workloads beside it
for path in (ROOT, ROOT / "tests", ROOT / "tests" / "workers", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402

import distdl as dl  # noqa: E402
from distdl import backend, device  # noqa: E402
from gpu_ddp import PathSaid  # noqa: E402


class CheckFailed(AssertionError):
    """A step's verdict with the figures that explain it (kept in the report)."""

    def __init__(self, message, data=None):
        super().__init__(message)
        self.data = data or {}


def engine_device(simulate):
    """Where the engine's tensors go: the GPU, or None (NumPy, which is what the simulated device computes on)."""
    return None if simulate else "cuda"


def layer_device(simulate):
    return device.get("sim" if simulate else "cuda")


def on_host(array):
    return backend.to_device(array, "cpu")


HOST_WAITS = [("ndarray", name) for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__")]
HOST_WAITS += [("cuda.Stream", "synchronize"), ("cuda.Event", "synchronize")]  # cuda.Device's is immutable


@contextlib.contextmanager
def counted_host_waits(counts):
    """Count in ``counts``, by name, the calls through which the host waits for the GPU (reading an array's
    values, a synchronize). CuPy's own detector (Device.forbid_syncs) is kept too, but CuPy 14's
    ndarray.get no longer tells it, so it misses the commonest hidden wait; these wrappers change nothing else."""
    cp = backend.cupy()
    patched = []
    for owner_path, name in HOST_WAITS:
        owner = functools.reduce(getattr, owner_path.split("."), cp)
        original = getattr(owner, name)

        def counting(*args, _original=original, _label=f"cupy.{owner_path}.{name}", **kwargs):
            counts[_label] = counts.get(_label, 0) + 1
            return _original(*args, **kwargs)

        setattr(owner, name, counting)
        patched.append((owner, name, original))
    try:
        yield counts
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)


def first_line(exc):
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def synchronize(simulate):
    if not simulate:
        backend.cupy().cuda.get_current_stream().synchronize()


def child_env(simulate):
    """The environment of a process a step starts: this checkout's distdl; the simulated device when simulating."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if simulate:
        env["DISTDL_DEVICE"] = "sim"
    return env


# ---------------------------------------------------------------------------------------------- the steps


def environment(simulate):
    """Versions, the device, its memory, NCCL, and whether MPI is CUDA-aware."""
    info = {"python": platform.python_version(), "numpy": np.__version__, "distdl": dl.__version__}
    for module in ("mpi4py", "zmq", "tqdm", "threadpoolctl", "safetensors", "torch", "cupy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    missing = [module for module in ("mpi4py", "zmq", "tqdm", "threadpoolctl") if not info[module]]
    lacking = f"; distdl's dependencies missing here: {', '.join(missing)}" if missing else ""
    from distdl.comm.mpi import cuda_support
    from distdl.parallel.device_allreduce import nccl_available

    info["mpi_cuda_aware"] = cuda_support()  # what DDP's 'auto' asks, the way it asks
    info["nccl_available"] = nccl_available()
    if simulate:
        info["device"] = repr(layer_device(simulate))
        return f"simulated device on numpy {np.__version__}; MPI CUDA-aware: {info['mpi_cuda_aware']}{lacking}", info
    cp = backend.cupy()
    count = cp.cuda.runtime.getDeviceCount()
    props = cp.cuda.runtime.getDeviceProperties(0)
    free, total = cp.cuda.Device(0).mem_info
    from cupy.cuda import nccl

    info.update(devices=count, name=props["name"].decode(), memory_gib=round(total / 2**30, 1),
                free_gib=round(free / 2**30, 1), cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                cuda_driver=cp.cuda.runtime.driverGetVersion(),
                nccl=nccl.get_version() if nccl.available else None)
    if info["torch"]:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()  # bench_vs_torch's peer runs on the GPU only then
    return (f"{count} x {info['name']} {info['memory_gib']} GiB, CuPy {cp.__version__}, CUDA {info['cuda_runtime']}, "
            f"NCCL {info['nccl']}, MPI CUDA-aware: {info['mpi_cuda_aware']}, torch {info['torch']}{lacking}"), info


def device_layer(simulate):
    """Copies both ways on a side stream, ordered by events against the compute stream; a kernel launched there."""
    dev = device.bind("sim" if simulate else "cuda")
    xp, n = dev.xp, 1 << 20
    compute, side = dev.compute_stream(), dev.new_stream()
    x = dev.empty((n,), np.float32)
    x[...] = xp.arange(n, dtype=xp.float32)  # on the compute stream
    side.wait_event(dev.record_event(compute))
    host = dev.pinned_empty((n,), np.float32)
    host.fill(-1)
    dev.copy_to_host(x, host, side)
    copied = dev.record_event(side)
    if simulate and not (host == -1).all():
        raise CheckFailed("the simulated copy to the host took effect before its event was synchronized")
    copied.synchronize()
    if not np.array_equal(host, np.arange(n, dtype=np.float32)):
        raise CheckFailed("device -> pinned host copy: wrong values after its event")
    staged = dev.pinned_empty((n,), np.float32)
    staged[...] = 2 * np.arange(n, dtype=np.float32)
    y = dev.empty((n,), np.float32)
    dev.copy_to_device(staged, y, side)
    dev.launch(side, lambda a: xp.multiply(a, 3, out=a), y)
    tripled = dev.record_event(side)
    compute.wait_event(tripled)  # what the compute stream does next sees the kernel's result
    got = on_host(y + 0)
    if not np.array_equal(got, 6 * np.arange(n, dtype=np.float32)):
        raise CheckFailed("pinned host -> device copy and a kernel on a side stream: wrong values after the wait")
    if not tripled.query():
        raise CheckFailed("an event the compute stream has waited on is not done")
    return f"{dev}: device->host, host->device and a kernel on a side stream, ordered by events", {}


def pinned_memory(simulate):
    """pinned_empty is page-locked (so copies are asynchronous), and what a large copy each way achieves."""
    dev, cp = device.bind("cuda"), backend.cupy()
    n = 64 << 20  # 256 MiB of float32
    host = dev.pinned_empty((n,), np.float32)
    kind = cp.cuda.runtime.pointerGetAttributes(host.ctypes.data).type
    if kind != cp.cuda.runtime.memoryTypeHost:
        raise CheckFailed(f"pinned_empty gave memory of CUDA type {kind}, not page-locked host memory")
    x, stream = cp.ones(n, cp.float32), dev.new_stream()
    figures = {}
    for name, copy, args in (("d2h_GBps", dev.copy_to_host, (x, host)), ("h2d_GBps", dev.copy_to_device, (host, x))):
        dev.compute_stream().synchronize()
        start = time.perf_counter()
        launch_end = None
        for _ in range(4):
            copy(*args, stream)
            launch_end = launch_end or time.perf_counter() - start
        dev.record_event(stream).synchronize()
        figures[name] = round(4 * 4 * n / (time.perf_counter() - start) / 1e9, 1)
        figures[name.replace("GBps", "first_call_ms")] = round(1e3 * launch_end, 2)
    if not np.all(host == 1):
        raise CheckFailed("pinned round trip: wrong values")
    return f"page-locked; 256 MiB copies: {figures['d2h_GBps']} GB/s to the host, {figures['h2d_GBps']} GB/s back", figures


def _each_case(check, names):
    failures = []
    for name in names:
        try:
            check(name)
        except Exception as exc:  # every op's verdict in one run: a lent GPU is rare
            failures.append(f"{name}: {first_line(exc)[:200]}")
    return failures


def ops_gradcheck(simulate):
    """Every op of tests/op_table.py: its gradient on the device against finite differences, in float64;
    the table's non-contiguous cases on Fortran-order and strided inputs too."""
    from op_checks import check_gradient
    from op_table import CASES, NONCONTIGUOUS

    where = engine_device(simulate)
    failures = _each_case(lambda name: check_gradient(name, where), sorted(CASES))
    failures += [f"non-contiguous {f}" for f in _each_case(lambda name: check_gradient(name, where, noncontig=True),
                                                           NONCONTIGUOUS)]
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(CASES) + len(NONCONTIGUOUS)} cases: " + "; ".join(failures[:4]),
                          {"failures": failures})
    return (f"{len(CASES)} ops ({len(NONCONTIGUOUS)} also non-contiguous) on {where or 'numpy'}: gradients equal "
            "finite differences (float64)"), {"ops": len(CASES)}


def ops_vs_numpy(simulate):
    """Every op's value and gradients on the device equal NumPy's: 1e-10 in float64, 1e-4 in float32."""
    from op_checks import check_against_numpy
    from op_table import CASES

    where = engine_device(simulate)
    failures = []
    for dtype in ("float64", "float32"):
        failures += [f"{dtype} {f}" for f in _each_case(lambda n: check_against_numpy(n, where, dtype), sorted(CASES))]
    if failures:
        raise CheckFailed(f"{len(failures)} of {2 * len(CASES)} op x dtype: " + "; ".join(failures[:4]),
                          {"failures": failures})
    return f"{len(CASES)} ops x float64, float32 on {where or 'numpy'} equal numpy", {"ops": len(CASES)}


def rng_same_draws(simulate):
    """distdl.rng on the device draws NumPy's bits, uniforms, normals and dropout keep-masks; dropout after
    dl.seed keeps the same entries on both; a saved (seed, counter) state repeats its draws on the device."""
    from distdl import functional as F
    from distdl import rng

    xp = layer_device(simulate).xp
    shape = (257, 129)  # odd sizes: the unused high half of the last word
    for seed in (0, 12345, 2**64 - 1):
        host, dev = rng.Generator(seed), rng.Generator(seed)
        draws = [("bits", lambda g, m: g.bits(1001, m)), ("uniform32", lambda g, m: g.uniform(shape, np.float32, m)),
                 ("uniform64", lambda g, m: g.uniform(shape, np.float64, m)),
                 ("keep", lambda g, m: g.keep(shape, 0.3, m))]
        for name, draw in draws:
            if not np.array_equal(on_host(draw(dev, xp)), draw(host, np)):
                raise CheckFailed(f"seed {seed}: {name} differs on the device")
        np.testing.assert_allclose(on_host(dev.normal(shape, xp=xp)), host.normal(shape), rtol=1e-13, atol=1e-13,
                                   err_msg=f"seed {seed}: normal")
        state = dev.state()
        first = on_host(dev.bits(64, xp))
        dev.set_state(json.loads(json.dumps(state)))
        if not np.array_equal(on_host(dev.bits(64, xp)), first):
            raise CheckFailed(f"seed {seed}: draws after set_state(a saved state) differ")
    where = engine_device(simulate)
    kept = []
    for place in (None, where):
        dl.seed(7)
        x = dl.tensor(np.ones((64, 33), np.float32), device=place)
        kept.append(on_host(F.dropout(x, 0.4).data) != 0)
    if not np.array_equal(*kept):
        raise CheckFailed(f"dropout after dl.seed(7) keeps {int(kept[1].sum())} entries on the device, other "
                          f"than NumPy's {int(kept[0].sum())}")
    return f"bits, uniforms, keep-masks equal, normals to 1e-13, on {xp.__name__}; dropout masks equal", {}


def train_steps(simulate):
    """Three steps of the MLP, CNN and LSTM benchmark models on the device land where the same steps on NumPy
    do (float64); on a GPU the last two queue without a host wait: the sync probe's spinning kernel still runs
    once they are queued (tests/sync_probe.py), CuPy's detector stays quiet, and no waiting call is counted."""
    from sync_probe import host_waited
    from workloads import workload

    where, dev, waits, probed = engine_device(simulate), layer_device(simulate), {}, {}
    for key in ("mlp", "cnn", "lstm"):
        title, build, x, y, loss_name, (opt_name, lr) = workload(key, np.random.default_rng(0))
        x, y = x[:32], (y.astype(np.float64) if y.dtype.kind == "f" else y)[:32]  # 32 samples: checks, not speed
        dl.seed(0)
        reference = build(dl.nn).double()
        states = []
        for place in (None, where):
            model = build(dl.nn).double()
            model.load_state_dict(reference.state_dict())
            if place:
                model.to(place)
            optimizer = getattr(dl.optim, opt_name)(model.parameters(), lr=lr)
            loss_fn = getattr(dl.nn, loss_name)()
            inputs, targets = dl.tensor(x, device=place), backend.as_array(y, device=place)
            if y.dtype.kind == "f":
                targets = dl.tensor(targets)

            def step():
                optimizer.zero_grad()
                loss_fn(model(inputs), targets).backward()
                optimizer.step()

            def watched():
                with dev.forbid_syncs(), counted_host_waits(waits.setdefault(key, {})):
                    step()

            step()  # the first step may allocate, compile kernels and read what it must
            if place:
                probed[key] = host_waited(dev, watched)  # runs the step twice
            else:
                step(), step()
            synchronize(simulate)
            states.append({k: on_host(v) for k, v in model.state_dict().items()})
        for name, value in states[0].items():
            np.testing.assert_allclose(states[1][name], value, rtol=1e-8, atol=1e-10, err_msg=f"{title}: {name}")
    waited = {key: waits.get(key) or "by the probe" for key, spun in probed.items() if spun or waits.get(key)}
    if waited:
        raise CheckFailed(f"the host waited for the GPU inside a step: {waited}", {"host_waits": waited})
    sync = "steps 2-3 queued without a host wait" if not simulate else "no host wait to probe on the simulator"
    return f"MLP, CNN, LSTM: three steps equal NumPy's (float64); {sync}", {}


def _checkpoint_model(place):
    """A float64 model with parameters and buffers (an integer one too), Adam, and one batch for it."""
    dl.seed(3)
    model = dl.nn.Sequential(dl.nn.Linear(6, 8), dl.nn.BatchNorm1d(8), dl.nn.Tanh(), dl.nn.Linear(8, 3)).double()
    if place:
        model.to(place)
    rng = np.random.default_rng(5)
    batch = dl.tensor(rng.standard_normal((16, 6)), device=place), backend.as_array(rng.integers(0, 3, 16), device=place)
    return model, dl.optim.Adam(model.parameters(), lr=0.05), batch


def _train_step(model, optimizer, batch):
    optimizer.zero_grad()
    dl.nn.CrossEntropyLoss()(model(batch[0]), batch[1]).backward()
    optimizer.step()


def _host_state(model):
    return {k: on_host(v) for k, v in model.state_dict().items()}


def checkpoint_to_cpu(simulate):
    """A checkpoint of a model and its Adam state on the device loads in a process without a GPU, where one
    more step lands where the device's does; and it loads back onto the device."""
    where = engine_device(simulate)
    dl.init(backend="local")
    model, optimizer, batch = _checkpoint_model(where)
    for _ in range(2):
        _train_step(model, optimizer, batch)
    dl.save_checkpoint("ckpt", model=model, optimizer=optimizer, step=2)
    np.savez("saved.npz", **_host_state(model))
    _train_step(model, optimizer, batch)
    env = dict(child_env(simulate), CUDA_VISIBLE_DEVICES="", DISTDL_DEVICE="cpu")
    host = subprocess.run([sys.executable, str(HERE / "gpu_check.py"), "--load-on-host", "ckpt"], env=env, capture_output=True,
                          text=True, timeout=60)
    if host.returncode:
        raise CheckFailed(f"loading on the host failed: {host.stderr.strip().splitlines()[-1:]}")
    want = _host_state(model)
    cupy_used = json.loads(Path("host_load.json").read_text())["cupy_imported"]
    with np.load("host_after.npz") as got:
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-10, atol=1e-12, err_msg=f"host step after load: {name}")
    again, again_optimizer, again_batch = _checkpoint_model(where)
    state = dl.load_checkpoint("ckpt", model=again, optimizer=again_optimizer)
    _train_step(again, again_optimizer, again_batch)
    for name, value in _host_state(again).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-10, atol=1e-12, err_msg=f"device step after load: {name}")
    dl.shutdown()
    saved_on = where or f"numpy ({device.current()} bound)"
    return (f"saved on {saved_on} at step {state['step']}; loaded without a GPU (CuPy imported there: {cupy_used}) "
            "and back, steps agree"), {"cupy_imported_on_host": cupy_used}


def load_on_host(path):
    """In a process without a GPU: load the checkpoint, check what was saved, take one more step."""
    dl.init(backend="local")
    model, optimizer, batch = _checkpoint_model(None)
    dl.load_checkpoint(path, model=model, optimizer=optimizer)
    with np.load("saved.npz") as saved:
        for name, value in _host_state(model).items():
            assert type(value) is np.ndarray, f"{name} loaded as {type(value).__name__}"
            np.testing.assert_array_equal(value, saved[name], err_msg=f"loaded {name}")
    _train_step(model, optimizer, batch)
    np.savez("host_after.npz", **_host_state(model))
    Path("host_load.json").write_text(json.dumps({"cupy_imported": "cupy" in sys.modules}))
    dl.shutdown()


def dataloader_device(simulate):
    """DataLoader(device=...) hands every batch over on the device, equal to the host's batches, in order."""
    from distdl.data import DataLoader, TensorDataset

    target = "sim" if simulate else "cuda"
    device.bind(target)
    rng = np.random.default_rng(0)
    dataset = TensorDataset(rng.random((40, 3, 8, 8)).astype(np.float32), np.arange(40))
    expected = list(DataLoader(dataset, batch_size=6, shuffle=False))
    sums, batches = [], []
    for x, y in DataLoader(dataset, batch_size=6, shuffle=False, device=target):
        for array in (x, y):
            if simulate != isinstance(array, np.ndarray):
                raise CheckFailed(f"a batch came as {type(array).__name__} for device {target}")
        sums.append(x.sum(axis=(1, 2, 3)) + y)  # read at once: the loader may refill its host buffers
        batches.append((x, y))
    if len(batches) != len(expected):
        raise CheckFailed(f"{len(batches)} batches on {target}, {len(expected)} on the host")
    for i, ((x, y), (hx, hy), total) in enumerate(zip(batches, expected, sums)):
        np.testing.assert_array_equal(on_host(x), hx, err_msg=f"batch {i}: images")
        np.testing.assert_array_equal(on_host(y), hy, err_msg=f"batch {i}: labels")
        np.testing.assert_allclose(on_host(total), hx.sum(axis=(1, 2, 3)) + hy, rtol=1e-5, err_msg=f"batch {i}: read")
    return f"{len(batches)} batches on {target} equal the host's, read as they came and at the end", {}


def trainer_device(simulate):
    """Trainer(device=...).fit with validation and accuracy on the device: the same history and weights as on
    the host (float64; the batches go through the DataLoader's device path, the checks once per step)."""
    target = "sim" if simulate else "cuda"
    dl.init(backend="local")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((96, 6)), rng.integers(0, 3, 96)
    runs = []
    for place in (None, target):
        model, optimizer, _ = _checkpoint_model(None)
        trainer = dl.Trainer(model, optimizer, loss=dl.nn.CrossEntropyLoss(), metrics=["accuracy"], device=place)
        history = trainer.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=False)
        runs.append((dict(history), _host_state(model)))
    (host_history, host_state), (dev_history, dev_state) = runs
    for key, values in host_history.items():
        np.testing.assert_allclose(dev_history[key], values, rtol=1e-9, atol=1e-12, err_msg=f"history {key}")
    for name, value in host_state.items():
        np.testing.assert_allclose(dev_state[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    dl.shutdown()
    return f"2 epochs on {target}: history ({', '.join(host_history)}) and weights equal the host's", {}


def ddp_two_ranks(simulate):
    """distdl-run -n 2 with both ranks on one device: DDP with tensors there equals one process on NumPy with
    the whole batch (float64), and its buckets take the staging path (NCCL refuses two ranks on one GPU)."""
    kind = "sim" if simulate else "cuda"
    out_dir = Path("ddp").resolve()
    out_dir.mkdir()
    env = dict(child_env(simulate), DISTDL_TIMEOUT="60")
    run = subprocess.run([sys.executable, "-m", "launcher", "-n", "2", str(ROOT / "tests" / "workers" / "gpu_ddp.py"),
                          kind, str(out_dir)], env=env, capture_output=True, text=True, timeout=150)
    if run.returncode:
        lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()] or ["?"]
        first = next((i for i, line in enumerate(lines) if "root cause" in line or "failed with exit code" in line),
                     len(lines) - 1)  # the launcher's verdict, and what it quotes of the failed rank
        raise CheckFailed(f"the 2-rank job failed: {' / '.join(lines[first:])[:400]}",
                          {"output": (run.stdout + run.stderr)[-3000:]})
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    methods = {r["method"] for r in ranks}
    if methods != {"staging"}:
        raise CheckFailed(f"the ranks' device buckets took {sorted(map(str, methods))}, not staging "
                          "(None: DDP never said which path)", {"ranks": ranks})
    worst = max(r["worst"] for r in ranks)
    return (f"2 ranks on {ranks[0]['device']}, {ranks[0]['buckets']} buckets through staging: equal to one process "
            f"on NumPy to {worst:.1e}"), {"ranks": ranks}


def nccl_one_rank(simulate):
    """A 1-rank NCCL communicator from distdl's unique-id bootstrap averages a device array (NCCL_AVG), on a
    stream of its own; then DDP forced onto NCCL (DISTDL_GPU_ALLREDUCE=nccl) trains as the plain model does."""
    from distdl.parallel.device_allreduce import nccl_unique_id

    cp = backend.cupy()
    from cupy.cuda import nccl

    if not nccl.available:
        raise CheckFailed("CuPy finds no NCCL library (pip install nvidia-nccl-cu12, or put libnccl on the "
                          "library path)")
    comm = dl.init(backend="local")
    dev = device.bind("cuda")
    communicator = nccl.NcclCommunicator(1, nccl_unique_id(comm, nccl.get_unique_id), 0)
    x = cp.arange(1 << 20, dtype=cp.float32)
    stream = dev.new_stream()
    stream.wait_event(dev.record_event(dev.compute_stream()))
    communicator.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_AVG, stream.raw.ptr)
    dev.record_event(stream).synchronize()
    if not np.array_equal(on_host(x), np.arange(1 << 20, dtype=np.float32)):
        raise CheckFailed("NCCL's average over one rank changed the array")
    communicator.destroy()
    os.environ["DISTDL_GPU_ALLREDUCE"] = "nccl"
    said = PathSaid.listening()
    plain, plain_opt, batch = _checkpoint_model("cuda")
    model, model_opt, _ = _checkpoint_model("cuda")
    ddp = dl.DistributedDataParallel(model)
    for _ in range(3):
        _train_step(plain, plain_opt, batch)
        _train_step(ddp, model_opt, batch)
    for name, value in _host_state(plain).items():
        np.testing.assert_allclose(_host_state(model)[name], value, rtol=1e-12, atol=1e-14, err_msg=name)
    dl.shutdown()
    if said.method not in ("nccl", None):
        raise CheckFailed(f"DISTDL_GPU_ALLREDUCE=nccl, yet DDP's buckets took {said.method}")
    ddp_path = "DDP over NCCL" if said.method else "DDP in a world of one (no allreduce path said)"
    return f"NCCL {nccl.get_version()}: 1-rank allreduce exact; {ddp_path} equals the plain model", {}


def bench_vs_torch(simulate):
    """scripts/bench_engine.py --device cuda: the engine's step times against PyTorch's on the same GPU."""
    command = [sys.executable, str(HERE / "bench_engine.py"), "--device", "cuda", "--models", "mlp,cnn,lstm",
               "--rounds", "2", "--seconds", "0.5", "--repeats", "10"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=150)
    if out.returncode:
        raise CheckFailed(f"bench_engine.py failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}",
                          {"stderr": out.stderr[-2000:]})
    table = out.stdout.strip()
    ratios = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[4].endswith("x"):
            ratios[cells[0]] = cells[4]
    summary = ", ".join(f"{name.split()[0]} {ratio}" for name, ratio in ratios.items()) or "no torch peer"
    return f"step time / torch's on the same GPU: {summary}", {"table": table, "ratios": ratios}


STEPS = [  # (name, function, timeout in s, needs a real GPU)
    ("environment", environment, 60, False),
    ("device_layer", device_layer, 30, False),
    ("pinned_memory", pinned_memory, 30, True),
    ("ops_gradcheck", ops_gradcheck, 120, False),
    ("ops_vs_numpy", ops_vs_numpy, 120, False),
    ("rng_same_draws", rng_same_draws, 45, False),
    ("train_steps", train_steps, 90, False),
    ("checkpoint_to_cpu", checkpoint_to_cpu, 60, False),
    ("dataloader_device", dataloader_device, 30, False),
    ("trainer_device", trainer_device, 60, False),
    ("ddp_two_ranks", ddp_two_ranks, 120, False),
    ("nccl_one_rank", nccl_one_rank, 45, True),
    ("bench_vs_torch", bench_vs_torch, 160, True),
]

