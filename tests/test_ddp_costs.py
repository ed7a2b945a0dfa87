"""DDP's fixed costs: no allreduce in a world of one; the communication thread only where a core is free for it."""

import copy

import numpy as np
import pytest

import distdl as dl
from distdl import nn
from distdl.comm.local import LocalCommunicator
from distdl.comm.threads import cores_per_rank
from distdl.parallel import NonFiniteGradientError
from distdl.parallel import ddp as ddp_module
from multiproc import run


def test_one_process_averages_nothing_and_still_checks_finiteness():
    dl.seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    plain = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model, process_group=LocalCommunicator())
    assert "one process: no allreduce" in repr(ddp)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    ddp(dl.tensor(x)).sum().backward()
    plain(dl.tensor(x)).sum().backward()
    for p, q in zip(model.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    x[0, 0] = np.nan
    model.zero_grad()
    with pytest.raises(NonFiniteGradientError, match="step 2: a NaN or Inf gradient on rank 0"):
        ddp(dl.tensor(x)).sum().backward()
    skipping = dl.DistributedDataParallel(plain, process_group=LocalCommunicator(), nonfinite="skip")
    skipping(dl.tensor(x)).sum().backward()
    assert (skipping.steps, skipping.skipped_steps, skipping.step_skipped) == (1, 1, True)
    assert all(p.grad is None for p in plain.parameters())
    x[0, 0] = 1.0
    skipping(dl.tensor(x)).sum().backward()
    assert (skipping.steps, skipping.skipped_steps, skipping.step_skipped) == (2, 1, False)


def test_a_nan_accumulated_under_no_sync_in_a_parameter_the_synced_pass_leaves_out_is_caught():
    """The finiteness check sums each gradient's squares as it becomes final, also at the end of backward for
    those no hook saw in this pass."""
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.skipped = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x, both):
            return self.used(x) + self.skipped(x) if both else self.used(x)

    model = Branches()
    ddp = dl.DistributedDataParallel(model, process_group=LocalCommunicator())
    x = dl.tensor(np.ones((2, 3), np.float32))
    with ddp.no_sync():
        ddp(x, True).sum().backward()
    model.skipped.weight.grad[0, 0] = np.nan
    with pytest.raises(NonFiniteGradientError, match="first non-finite parameter: rank 0: skipped.weight"):
        ddp(x, False).sum().backward()


def test_the_communication_thread_only_where_a_core_is_free(monkeypatch):
    comm = LocalCommunicator()
    monkeypatch.delenv("DISTDL_DDP_OVERLAP", raising=False)
    assert ddp_module._overlap(comm) == (cores_per_rank(comm.local_size) >= 2)
    comm.local_size = 10 ** 6  # more ranks on this host than cores
    assert not ddp_module._overlap(comm)
    monkeypatch.setenv("DISTDL_DDP_OVERLAP", "thread")
    assert ddp_module._overlap(comm)
    monkeypatch.setenv("DISTDL_DDP_OVERLAP", "inline")
    assert not ddp_module._overlap(LocalCommunicator())
    monkeypatch.setenv("DISTDL_DDP_OVERLAP", "sometimes")
    with pytest.raises(ValueError, match="use auto .*, thread or inline"):
        ddp_module._overlap(comm)


@pytest.mark.parametrize("overlap", ["thread", "inline"])
def test_both_ways_reach_the_one_worker_parameters(monkeypatch, overlap):
    """Whichever this machine's cores choose, the other way is run too."""
    monkeypatch.setenv("DISTDL_DDP_OVERLAP", overlap)
    result = run("zmq", 2, "ddp.py", "equivalence", "cnn", "sgd", "float64", timeout=120)
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("equivalence cnn sgd float64 ok") == 2


def test_a_parameter_with_its_own_hooks_is_not_offered_its_bucket_place():
    """Its hooks must see the local gradient, unscaled; one that replaces p.grad would otherwise get it scaled twice."""
    dl.seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    seen = []
    model[0].weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.copy()))
    plain = copy.deepcopy(model)
    ddp = dl.DistributedDataParallel(model, process_group=LocalCommunicator())
    x = dl.tensor(np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32))
    ddp(x)  # armed
    offered = {name: p._grad_into(p) for name, p in model.named_parameters()}  # what the engine would be told
    assert offered["0.weight"] is None and offered["2.weight"] is not None
    ddp(x).sum().backward()
    plain(x).sum().backward()
    np.testing.assert_array_equal(seen[0], plain[0].weight.grad)
    np.testing.assert_array_equal(model[0].weight.grad, plain[0].weight.grad)
