"""The same ops on CuPy give NumPy's values and gradients. Skipped where there is no GPU (CI has none)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F
from op_checks import check_against_numpy, check_gradient
from op_table import CASES, NONCONTIGUOUS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not dl.gpu_available(), reason="needs CuPy and a CUDA GPU")]


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_gradient_on_cupy_in_float64(name):
    check_gradient(name, "cuda")


@pytest.mark.parametrize("name", NONCONTIGUOUS)
def test_op_gradient_on_cupy_noncontiguous_inputs(name):
    check_gradient(name, "cuda", noncontig=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_value_and_gradient_equal_numpy(name, dtype):
    check_against_numpy(name, "cuda", dtype)


@pytest.mark.parametrize("step", ["device_layer", "pinned_memory", "rng_same_draws", "train_steps", "checkpoint_to_cpu",
                                  "dataloader_device", "trainer_device", "ddp_two_ranks", "nccl_one_rank"])
def test_gpu_check_step(step, tmp_path):
    """The steps of scripts/gpu_check.py beyond the op table: DDP on 2 processes sharing one GPU through staging,
    a 1-rank NCCL communicator, a GPU checkpoint loaded on the CPU, the loader, the RNG, steps without a sync."""
    report = tmp_path / "report.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script), "--only", step, "--report", str(report)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    (result,) = json.loads(report.read_text())["steps"]
    assert out.returncode == 0 and result["status"] == "passed", out.stdout + result["output_tail"]


def small_cnn(x, w1, w2, emb):
    h = F.max_pool2d(F.relu(F.conv2d(x, w1, padding=1)), 2)
    h = F.batch_norm(h, None, None, training=True)
    h = F.gelu(F.avg_pool2d(h, 2)).flatten(1)
    logits = F.linear(h, w2) + F.embedding(np.array([0, 2, 1]), emb).sum(axis=1, keepdims=True)
    return F.cross_entropy(logits, np.array([1, 0, 3]), label_smoothing=0.1) + F.mse_loss(F.sigmoid(logits), logits * 0)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_forward_and_gradients_match_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) for s in [(3, 2, 8, 8), (4, 2, 3, 3), (5, 4 * 2 * 2), (3, 5)]]
    results = {}
    for device in ("cpu", "cuda"):
        tensors = [dl.tensor(a, requires_grad=True, device=device) for a in arrays]
        loss = small_cnn(*tensors)
        loss.backward()
        assert tensors[0].device.startswith(device)
        results[device] = [loss.numpy()] + [t.grad.get() if device == "cuda" else t.grad for t in tensors]
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(gpu, cpu, rtol=tol, atol=tol)


class Mixed(dl.nn.Module):
    """A model with every kind of layer state: conv, batch-norm buffers, LSTM, layer norm, adaptive pooling."""

    def __init__(self):
        super().__init__()
        nn = dl.nn
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = self.features(x).reshape(x.shape[0], 4, 4).transpose(1, 2)  # 4 steps of 4 features
        return self.head(self.norm(self.lstm(h)[0][:, -1]))


def test_module_and_optimizer_steps_match_numpy():
    dl.seed(0)
    reference = Mixed().double()
    x = np.random.default_rng(1).standard_normal((5, 2, 6, 6))
    y = np.array([0, 2, 1, 1, 0])
    states = {}
    for device in ("cpu", "cuda"):
        model = Mixed().double()
        model.load_state_dict(reference.state_dict())
        model.to(device)
        optimizer = dl.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            dl.nn.CrossEntropyLoss()(model(dl.tensor(x, device=device)), y).backward()
            dl.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        states[device] = {k: dl.backend.to_device(v, "cpu") for k, v in model.state_dict().items()}
    for key, value in states["cpu"].items():
        np.testing.assert_allclose(states["cuda"][key], value, rtol=1e-8, atol=1e-10, err_msg=key)


def test_loader_hands_batches_to_the_gpu_and_transforms_run_there():
    from distdl import backend, metrics
    from distdl.data import DataLoader, SampleKeys, TensorDataset
    from distdl.data import transforms as T

    images = np.random.default_rng(0).random((10, 3, 6, 6)).astype(np.float32)
    loader = DataLoader(TensorDataset(images, np.arange(10)), batch_size=5, device="cuda")
    x, y = next(iter(loader))
    assert backend.is_gpu_array(x) and backend.is_gpu_array(y)
    augment = T.Compose([T.RandomCrop(6, padding=2), T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.25] * 3)])
    keys = SampleKeys(0, 0, np.arange(5))
    np.testing.assert_allclose(augment(x, keys).get(), augment(images[:5], keys), rtol=1e-6)
    assert metrics.accuracy(y, x.reshape(5, -1)[:, :5]) == metrics.accuracy(y.get(), images[:5].reshape(5, -1)[:, :5])
