"""Step time of zero_grad + forward + backward + optimizer step, distdl against PyTorch in the same run.

Models, built by the same code from ``distdl.nn`` and ``torch.nn`` and started from the same weights:
(a) MLP 784-128-64-10 ReLU, cross-entropy, SGD, batch 128;
(b) CNN Conv(3->32,3x3)-ReLU-MaxPool2-Conv(32->64,3x3)-ReLU-MaxPool2-Flatten-Linear(->128)-ReLU-Linear(->10)
    on 3x32x32, cross-entropy, SGD, batch 128;
(c) LSTM 3 layers of 50 units over 50 steps of 8 inputs, Linear(50->1) on the last step, BCE with logits,
    Adam, batch 32;
(c') GRU of the same shapes and head;
(d) autoencoder 784-256-256-256-784, ReLU, sigmoid output, BCE, Adam, batch 256.
Both get the same data and thread count. PyTorch is an optional peer: without it only distdl's times are printed.
For the CNN on the CPU, the peak memory one step adds is measured too, for each framework in a fresh process.
With --device cuda both run on the same GPU (distdl through CuPy), each timed step ending in a device
synchronisation, so that a time covers the work and not only its launch.

    python scripts/bench_engine.py [--threads 1] [--seconds 1] [--rounds 3] [--models mlp,cnn,lstm,gru,ae] [--device cuda]
"""

import argparse
import ctypes
import os
import subprocess
import sys
import time


MODELS = ("mlp", "cnn", "lstm", "gru", "ae")
TARGETS = {"mlp": 0.9, "cnn": 1.0, "lstm": 1.4, "ae": 0.9}  # the issue's, against torch on the CPU (none for GRU)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for both frameworks")
    parser.add_argument("--repeats", type=int, default=15, help="least timed steps per model and round")
    parser.add_argument("--seconds", type=float, default=1.0, help="least time per model, framework and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating distdl/torch rounds (drift hits both)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn,lstm,gru,ae")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both frameworks run")
    parser.add_argument("--peak-of", metavar="MODEL:FRAMEWORK", help=argparse.SUPPRESS)  # the child of step_peak_mb
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import distdl as dl  # noqa: E402
from workloads import gpu_peer, make_step, require_gpu, synced, workload  # noqa: E402

try:
    import torch
except ImportError:
    torch = None
if ARGS.device == "cuda":
    require_gpu()
    torch = gpu_peer(torch)

PEAK_TARGET_MB = 60


def timed_steps(step, repeats, seconds):
    """Wall times of at least ``repeats`` steps and at least ``seconds`` in all."""
    times = []
    while len(times) < repeats or sum(times) < seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def build_steps(key, frameworks=("distdl", "torch")):
    """The title and each framework's step function (torch's where it is installed), from the same weights."""
    rng = np.random.default_rng(0)
    title, build, x, y, loss_name, (opt_name, lr) = workload(key, rng)
    x = x.astype(np.float32)
    dl.seed(0)
    model = build(dl.nn)
    steps = {}
    if torch is not None and "torch" in frameworks:
        peer = build(torch.nn)
        peer.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
        peer.to(ARGS.device)
        steps["torch"] = synced(make_step(peer, getattr(torch.optim, opt_name)(peer.parameters(), lr=lr),
                                          getattr(torch.nn, loss_name)(), torch.from_numpy(x).to(ARGS.device),
                                          torch.from_numpy(y).to(ARGS.device)),
                                torch.cuda.synchronize if ARGS.device == "cuda" else None, ARGS.device)
    model.to(ARGS.device)
    target = dl.backend.as_array(y, device=ARGS.device)
    step = make_step(model, getattr(dl.optim, opt_name)(model.parameters(), lr=lr), getattr(dl.nn, loss_name)(),
                     dl.tensor(x, device=ARGS.device), target if y.dtype.kind == "i" else dl.tensor(target))
    steps = {"distdl": synced(step, lambda: dl.backend.cupy().cuda.Device().synchronize(), ARGS.device), **steps}
    return title, {name: step for name, step in steps.items() if name in frameworks}


def _resident_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def print_step_peak(spec):
    """In the child: the most resident memory (MB) that one warm step adds, over 5 steps.

    Before each step, malloc_trim hands the memory glibc keeps from freed arrays back to the system
    (in both frameworks alike), and the high-water mark is reset (Linux's clear_refs): what the
    step allocates then shows as resident pages, whatever the allocator would have reused.
    """
    key, framework = spec.split(":")
    step = build_steps(key, (framework,))[1][framework]
    timed_steps(step, ARGS.warmup, 0)
    libc = ctypes.CDLL("libc.so.6")
    added = []
    for _ in range(5):
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = _resident_kb("VmRSS")
        step()
        added.append((_resident_kb("VmHWM") - before) / 1024)
    print(max(added))


def step_peak_mb(key, framework):
    """Peak memory one step of ``key`` adds, measured in a fresh process of this script (nothing else in it)."""
    child = subprocess.run([sys.executable, __file__, "--threads", str(ARGS.threads), "--warmup", str(ARGS.warmup),
                            "--peak-of", f"{key}:{framework}"], capture_output=True, text=True, check=True)
    return float(child.stdout.split()[-1])


def bench(key):
    """Median step time of each framework in ms, measured in alternating rounds, from the same weights."""
    title, steps = build_steps(key)
    times = {name: [] for name in steps}
    for step in steps.values():
        timed_steps(step, ARGS.warmup, 0)
    for _ in range(ARGS.rounds):
        for name, step in steps.items():
            times[name] += timed_steps(step, ARGS.repeats, ARGS.seconds)
    medians = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    return title, medians["distdl"], medians.get("torch"), len(times["distdl"])


def main():
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
    peer = f"torch {torch.__version__}" if torch is not None else "torch not installed"
    if ARGS.device == "cuda":
        cp = dl.backend.cupy()
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        where = f"on {name}, CuPy {cp.__version__}, a device sync after each step"
    else:
        where = f"{ARGS.threads} thread(s), numpy {np.__version__}"
    print(f"zero_grad+forward+backward+optimizer step, median over {ARGS.rounds} alternating rounds, {where}; {peer}")
    print(f"| {'model':<26} | {'steps':>5} | {'distdl ms':>9} | {'torch ms':>9} | {'ratio':>6} | {'target':>7} |")
    print(f"|{'-' * 28}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 9}|")
    for key in ARGS.models.split(","):
        name, ours, theirs, count = bench(key)
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        torch_ms = f"{theirs:9.2f}" if theirs else f"{'-':>9}"
        target = f"<={TARGETS[key]}x" if ARGS.device == "cpu" and key in TARGETS else "-"
        print(f"| {name:<26} | {count:5d} | {ours:9.2f} | {torch_ms} | {ratio:>6} | {target:>7} |")
    if "cnn" in ARGS.models.split(",") and ARGS.device == "cpu":
        theirs = f"{step_peak_mb('cnn', 'torch'):.1f} MB" if torch is not None else "-"
        print(f"\nCNN step, peak resident memory added (fresh process each): distdl {step_peak_mb('cnn', 'distdl'):.1f} MB, "
              f"torch {theirs}; target <= {PEAK_TARGET_MB} MB")


if __name__ == "__main__":
    if ARGS.peak_of:
        print_step_peak(ARGS.peak_of)
    else:
        main()
