"""No hidden host wait inside a training step on a real GPU, proven by the device itself (tests/sync_probe.py: a
spinning kernel still runs once the step is queued). Skipped where there is no GPU (CI has none); the same code
paths run on the simulated device in test_step_reads.py, test_loader.py and test_trainer_device.py."""

import time

import numpy as np
import pytest

import distdl as dl
from distdl import device, nn, optim, value_checks
from distdl import functional as F
from distdl.data import DataLoader, TensorDataset
from distdl.data import transforms as T
from sync_probe import host_waited

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not dl.gpu_available(), reason="needs CuPy and a CUDA GPU")]


@pytest.fixture
def gpu():
    return device.get("cuda:0")


def test_the_probe_sees_a_read_and_no_wait_in_plain_kernels(gpu):
    cp = gpu.xp
    x = cp.ones(1000)
    assert host_waited(gpu, lambda: float(x.sum()))
    assert not host_waited(gpu, lambda: x * 2 + 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16, momentum=None), nn.GELU(), nn.Dropout(0.1),
                                  nn.Linear(16, 3))

    def forward(self, x, tokens):
        return self.body(dl.cat([x, self.embedding(tokens).sum(axis=1)], 1))


def test_a_training_step_queues_without_waiting_for_the_gpu(gpu):
    rng = np.random.default_rng(0)
    x = dl.tensor(rng.standard_normal((32, 4)).astype(np.float32), device="cuda:0")
    tokens = dl.tensor(rng.integers(0, 10, (32, 5)), device="cuda:0").data
    labels = dl.tensor(np.where(rng.random(32) < 0.2, -100, rng.integers(0, 3, 32)), device="cuda:0").data
    model = Net().to("cuda:0")
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    weight = gpu.xp.asarray(np.array([1.0, 2.0, 0.5], np.float32))
    probabilities = gpu.xp.asarray(rng.random((32, 3)).astype(np.float32))

    def step():
        logits = model(x, tokens)
        loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=-100, label_smoothing=0.1) + \
            F.binary_cross_entropy(F.sigmoid(logits), probabilities)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
        optimizer.step()
        optimizer.zero_grad()

    assert not host_waited(gpu, step)
    value_checks.verify()  # the step's one read: its queued checks pass


def test_a_device_loader_hands_out_batches_without_waiting_for_the_gpu(gpu):
    images = np.random.default_rng(1).random((256, 3, 8, 8)).astype(np.float32)
    loader = DataLoader(TensorDataset(images, np.arange(256)), batch_size=16, prefetch=2, device="cuda:0",
                        transform=T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip()]))
    batches = iter(loader)
    next(batches)
    time.sleep(0.5)  # the prefetch thread fills its queue
    assert not host_waited(gpu, lambda: next(batches), at_least=3.0)
