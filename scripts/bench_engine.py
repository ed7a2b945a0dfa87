"""Step time of forward + backward + SGD on the engine, against PyTorch CPU in the same run.

Models: (a) MLP 784-128-64-10 ReLU, batch 128; (b) CNN Conv(3->32,3x3)-ReLU-MaxPool2-Conv(32->64,3x3)-ReLU-
MaxPool2-Flatten-Linear(->128)-ReLU-Linear(128->10) on 3x32x32, batch 128. Both frameworks get the same
weights, data and thread count. PyTorch is an optional peer: without it only distdl's times are printed.

    python scripts/bench_engine.py [--threads 1] [--seconds 1] [--rounds 3]
"""

import argparse
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for both frameworks")
    parser.add_argument("--repeats", type=int, default=15, help="least timed steps per model and round")
    parser.add_argument("--seconds", type=float, default=1.0, help="least time per model, framework and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating distdl/torch rounds (drift hits both)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn")
    return parser.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import distdl as dl  # noqa: E402
from distdl import functional as F  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

LR = 0.01
TARGETS = {"mlp": 1.0, "cnn": 1.5}


def init_params(shapes, rng):
    """PyTorch-style uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights as float32 arrays."""
    params = []
    for shape in shapes:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        bound = 1 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, shape).astype(np.float32))
    return params


MLP_SHAPES = [(128, 784), (128,), (64, 128), (64,), (10, 64), (10,)]
CNN_SHAPES = [(32, 3, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 64 * 6 * 6), (128,), (10, 128), (10,)]


def distdl_mlp(p, x):
    h = F.relu(F.linear(x, p[0], p[1]))
    h = F.relu(F.linear(h, p[2], p[3]))
    return F.linear(h, p[4], p[5])


def distdl_cnn(p, x):
    h = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2)
    h = F.relu(F.linear(h.flatten(1), p[4], p[5]))
    return F.linear(h, p[6], p[7])


def torch_mlp(p, x):
    tf = torch.nn.functional
    h = tf.relu(tf.linear(x, p[0], p[1]))
    h = tf.relu(tf.linear(h, p[2], p[3]))
    return tf.linear(h, p[4], p[5])


def torch_cnn(p, x):
    tf = torch.nn.functional
    h = tf.max_pool2d(tf.relu(tf.conv2d(x, p[0], p[1])), 2)
    h = tf.max_pool2d(tf.relu(tf.conv2d(h, p[2], p[3])), 2)
    h = tf.relu(tf.linear(h.flatten(1), p[4], p[5]))
    return tf.linear(h, p[6], p[7])


def distdl_step(forward, params, x, y):
    loss = F.cross_entropy(forward(params, x), y)
    loss.backward()
    with dl.no_grad():
        for p in params:
            p.data -= LR * p.grad
            p.grad = None
    return loss


def torch_step(forward, params, x, y):
    loss = torch.nn.functional.cross_entropy(forward(params, x), y)
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= LR * p.grad
            p.grad = None
    return loss


def timed_steps(step, repeats, seconds):
    """Wall times of at least ``repeats`` steps and at least ``seconds`` in all."""
    times = []
    while len(times) < repeats or sum(times) < seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def bench(name, shapes, input_shape, dl_forward, torch_forward):
    """Median step time of each framework in ms, measured in alternating rounds."""
    rng = np.random.default_rng(0)
    arrays = init_params(shapes, rng)
    x = rng.standard_normal(input_shape).astype(np.float32)
    y = rng.integers(0, 10, input_shape[0])
    params = [dl.tensor(a.copy(), requires_grad=True) for a in arrays]
    xt = dl.tensor(x)
    steps = {"distdl": lambda: distdl_step(dl_forward, params, xt, y)}
    if torch is not None:
        tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        steps["torch"] = lambda: torch_step(torch_forward, tparams, tx, ty)
    times = {key: [] for key in steps}
    for key, step in steps.items():
        timed_steps(step, ARGS.warmup, 0)
    for _ in range(ARGS.rounds):
        for key, step in steps.items():
            times[key] += timed_steps(step, ARGS.repeats, ARGS.seconds)
    medians = {key: 1e3 * float(np.median(t)) for key, t in times.items()}
    return name, medians["distdl"], medians.get("torch"), len(times["distdl"])


def main():
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
    models = {
        "mlp": ("MLP 784-128-64-10 b128", MLP_SHAPES, (128, 784), distdl_mlp, torch_mlp),
        "cnn": ("CNN 2xconv 3x32x32 b128", CNN_SHAPES, (128, 3, 32, 32), distdl_cnn, torch_cnn),
    }
    peer = f"torch {torch.__version__}" if torch is not None else "torch not installed"
    print(f"forward+backward+SGD step, median over {ARGS.rounds} alternating rounds, {ARGS.threads} thread(s); "
          f"numpy {np.__version__}, {peer}")
    print(f"| {'model':<26} | {'steps':>5} | {'distdl ms':>9} | {'torch ms':>9} | {'ratio':>6} | {'target':>7} |")
    print(f"|{'-' * 28}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 9}|")
    for key in ARGS.models.split(","):
        name, ours, theirs, count = bench(*models[key])
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        torch_ms = f"{theirs:9.2f}" if theirs else f"{'-':>9}"
        print(f"| {name:<26} | {count:5d} | {ours:9.2f} | {torch_ms} | {ratio:>6} | {'<=' + str(TARGETS[key]) + 'x':>7} |")


if __name__ == "__main__":
    main()
