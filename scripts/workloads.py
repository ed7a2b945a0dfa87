"""The benchmark models, built by the same code from ``distdl.nn`` or ``torch.nn``, and their data.

Shared by bench_engine.py (one process, distdl against PyTorch), bench_ddp.py and
scaling.py (data-parallel scaling), with the timing helpers of the multi-process
ones. Import it after setting the BLAS thread variables.
"""

import socket
import sys
import time

import numpy as np


# Each builder takes the framework's ``nn`` (distdl.nn or torch.nn): the same code builds both models.
def mlp(nn):
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn(nn):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def _last_step(nn, recurrent):
    class LastStep(nn.Module):
        """3 recurrent layers (nn.LSTM or nn.GRU) of 50 units, then a linear read-out of the last time step."""

        def __init__(self):
            super().__init__()
            self.rnn = recurrent(8, 50, num_layers=3, batch_first=True)
            self.head = nn.Linear(50, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return LastStep()


def lstm(nn):
    return _last_step(nn, nn.LSTM)


def gru(nn):
    return _last_step(nn, nn.GRU)


def autoencoder(nn):
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 784), nn.Sigmoid(),
    )


def workload(key, rng):
    """(title, builder, input, target, loss name, optimizer name and lr) of each benchmark model."""
    if key == "mlp":
        return "MLP 784-128-64-10 b128", mlp, rng.standard_normal((128, 784)), rng.integers(0, 10, 128), "CrossEntropyLoss", ("SGD", 0.01)
    if key == "cnn":
        return ("CNN 2xconv 3x32x32 b128", cnn, rng.standard_normal((128, 3, 32, 32)), rng.integers(0, 10, 128),
                "CrossEntropyLoss", ("SGD", 0.01))
    if key in ("lstm", "gru"):
        return (f"{key.upper()} 3x50 seq50 b32", {"lstm": lstm, "gru": gru}[key], rng.standard_normal((32, 50, 8)),
                rng.integers(0, 2, (32, 1)).astype(np.float32), "BCEWithLogitsLoss", ("Adam", 1e-3))
    images = rng.uniform(0, 1, (256, 784))
    return "AE 784-256x3-784 b256", autoencoder, images, images.astype(np.float32), "BCELoss", ("Adam", 1e-3)


def make_step(model, optimizer, loss_fn, x, y):
    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def agreed_steps(step, comm, seconds):
    """Calibrate on a few steps; every rank then runs the same number (the largest asked for)."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    wanted = max(5, int(seconds / ((time.perf_counter() - start) / 3)))
    return int(comm.allreduce(np.array([wanted], np.int64), "max", check=False)[0])


def timed(step, steps, after=None):
    times, extra = [], []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if after:
            extra.append(after())
    return times, extra


def synced(step, synchronize, device):
    """The step followed by a wait for the device, so that a time covers the work and not only its launch
    (on the CPU there is nothing to wait for)."""
    if device == "cpu":
        return step

    def step_and_wait():
        step()
        synchronize()
    return step_and_wait


def free_port():
    """A port free on loopback right now (for a peer's rendezvous, e.g. gloo's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_gpu():
    """For --device cuda: CuPy and a CUDA GPU, or a clear exit saying which is missing and what to do."""
    from distdl import backend

    try:
        cp = backend.cupy()
    except RuntimeError as exc:
        raise SystemExit(f"--device cuda: {exc}") from None
    if not backend.gpu_available():
        raise SystemExit(f"--device cuda: CuPy {cp.__version__} is installed but sees no CUDA GPU (no driver or no "
                         "device here): run on a GPU machine, or leave --device at cpu")


def gpu_peer(torch):
    """PyTorch as the peer on the GPU, or None (said on stderr) where it is missing or has no CUDA."""
    if torch is not None and not torch.cuda.is_available():
        print(f"torch {torch.__version__} has no CUDA here: distdl's GPU times only", file=sys.stderr)
        return None
    return torch
