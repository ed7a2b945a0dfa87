"""The same ops on CuPy give NumPy's values and gradients. Skipped where there is no GPU (CI has none)."""

import numpy as np
import pytest

import distdl as dl
from distdl import functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not dl.gpu_available(), reason="needs CuPy and a CUDA GPU")]


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
