"""DDP on the simulated asynchronous device (DISTDL_DEVICE=sim), through the staging path, on real processes.

The device's copies take effect only when their events are waited on, so these runs check the ordering
of the device allreduce (the gradients' event, the chunked copies, the compute stream's wait) on a CPU:
N workers equal one worker with the N-times batch, with bit-identical replicas; the fp16 hook, SyncBatchNorm,
unused parameters and non-finite gradients; and without the compute stream's wait the result is wrong.
"""

import secrets

import pytest

from multiproc import run
from test_ddp import processes_with

CASES = [  # lean: each scenario once, both backends and both world sizes among them
    ("zmq", 2, ("equivalence", "mlp", "sgd", "float32")),
    ("mpi", 3, ("equivalence", "cnn", "adam", "float64")),
    ("mpi", 2, ("fp16",)),
    ("zmq", 3, ("syncbn",)),
    ("zmq", 2, ("unused",)),
    ("mpi", 2, ("nonfinite",)),
]


def run_on_sim(monkeypatch, backend, size, args):
    monkeypatch.setenv("DISTDL_DEVICE", "sim")
    monkeypatch.setenv("DISTDL_STAGING_CHUNK_BYTES", "256")  # several chunks per bucket
    mark = secrets.token_hex(8)
    result = run(backend, size, "ddp_device.py", *args, "--mark", mark, timeout=120)
    assert not processes_with(mark)
    return result, "".join(result.outputs)


@pytest.mark.parametrize("backend,size,args", CASES, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_ddp_scenarios_on_the_simulated_device(monkeypatch, backend, size, args):
    result, output = run_on_sim(monkeypatch, backend, size, args)
    assert result.ok(), str(result)
    assert output.count(", on sim, gradient allreduce staging,") == size, output
    assert output.count(f"device {' '.join(args)} ok") == size, output


@pytest.mark.parametrize("args", [("equivalence", "mlp", "sgd", "float32"), ("fp16",)])
def test_without_the_compute_streams_wait_the_replicas_go_wrong(monkeypatch, args):
    """The optimizer reads the buckets before their averaged values are copied back: stale local gradients."""
    result, output = run_on_sim(monkeypatch, "zmq", 2, args + ("--no-compute-wait",))
    assert not result.ok()
    assert "AssertionError: replicas differ after step 0" in output, output
