"""The device buckets' allreduce: the choice of path, the NCCL id's bootstrap, staging on the simulated device."""

import re

import numpy as np
import pytest

from distdl import device
from distdl.backend import gpu_count
from distdl.comm.local import LocalCommunicator
from distdl.comm.mpi import cuda_support
from distdl.nn import Parameter
from distdl.parallel import device_allreduce as da
from distdl.parallel.buckets import plan_buckets
from multiproc import run


def ranks(*gpus, nccl=True, aware=False):
    """``choose``'s answers of ranks on the (host, PCI bus id) pairs ``gpus``."""
    return [[host, gpu, nccl, aware] for host, gpu in gpus]


A0, A1, B0 = ("a", "0000:17:00.0"), ("a", "0000:65:00.0"), ("b", "0000:17:00.0")


@pytest.mark.parametrize("answers,backend,want", [
    (ranks(A0, A1, B0), "mpi", "nccl"),  # same bus id on two hosts: two GPUs
    (ranks(A0), "zmq", "nccl"),
    (ranks(A0, A0, aware=True), "mpi", "cuda-aware-mpi"),  # two ranks on one GPU: NCCL would refuse ("Duplicate GPU")
    (ranks(A0, A0, aware=True), "zmq", "staging"),  # CUDA-aware is MPI's, never ZeroMQ's
    (ranks(A0) + ranks(A1, nccl=False), "mpi", "staging"),  # NCCL missing on one rank: none uses it
    (ranks(A0, nccl=False, aware=True) + ranks(A1, nccl=False), "mpi", "staging"),  # MPI CUDA-aware on one only
    (ranks(A0, nccl=False, aware=True), "mpi", "cuda-aware-mpi"),
])
def test_choose_from_every_ranks_answers(answers, backend, want):
    assert da.choose(answers, backend) == want


def test_the_real_detection_here_chooses_staging():
    """This machine: no GPU (no CuPy in this venv, or no driver), and the pip mpich is not CUDA-aware."""
    assert not da.nccl_available() and gpu_count() == 0 and cuda_support() is False
    assert da.choose([["here", None, da.nccl_available(), cuda_support()]], "mpi") == "staging"
    assert da.select(LocalCommunicator(), device.get("sim")) == "staging"


def test_the_path_can_be_forced_and_a_wrong_name_is_refused(monkeypatch):
    monkeypatch.setenv("DISTDL_GPU_ALLREDUCE", "staging")
    assert da.select(LocalCommunicator(), device.get("sim")) == "staging"
    for gpu_only in ("cuda-aware-mpi", "nccl"):  # off a GPU, a "launched" host allreduce would run out of order
        monkeypatch.setenv("DISTDL_GPU_ALLREDUCE", gpu_only)
        with pytest.raises(ValueError, match=f"{gpu_only}' needs a GPU; sim buckets take 'staging'"):
            da.select(LocalCommunicator(), device.get("sim"))
    monkeypatch.setenv("DISTDL_GPU_ALLREDUCE", "gloo")
    with pytest.raises(ValueError, match="use 'auto' or one of nccl, cuda-aware-mpi, staging"):
        da.select(LocalCommunicator(), device.get("sim"))


@pytest.mark.parametrize("backend,form", [("mpi", "tuple"), ("zmq", "tuple"), ("mpi", "bytes")])
def test_nccl_id_made_on_rank_0_reaches_every_rank(backend, form):
    """In the form rank 0's CuPy made it: NcclCommunicator takes bytes since CuPy 14, a tuple before."""
    result = run(backend, 2, "nccl_id.py", form, timeout=60)
    assert result.ok(), str(result)
    ids = dict(re.findall(r"rank (\d): id ([-\d,]+)", "".join(result.outputs)))
    want = ",".join(map(str, np.random.default_rng(17).integers(-128, 128, 128)))
    assert ids == {"0": want, "1": want}


def test_a_bad_staging_chunk_size_is_refused_saying_what_is_wanted(monkeypatch):
    monkeypatch.setenv("DISTDL_STAGING_CHUNK_BYTES", "4M")
    with pytest.raises(ValueError, match=r"DISTDL_STAGING_CHUNK_BYTES='4M': give a whole number of bytes"):
        da.DeviceAllreduce(LocalCommunicator(), device.get("sim"))
    monkeypatch.setenv("DISTDL_STAGING_CHUNK_BYTES", "256")
    assert da.DeviceAllreduce(LocalCommunicator(), device.get("sim")).chunk_bytes == 256


def sim_buckets(sizes):
    return plan_buckets([Parameter(np.zeros(n)) for n in sizes], 1 << 30)


def test_staging_in_chunks_is_copied_back_only_once_waited_for(monkeypatch):
    """A hook that doubles the host copy: the device bucket changes only when the compute stream waits."""
    sim = device.get("sim")
    reducer = da.DeviceAllreduce(LocalCommunicator(), sim, chunk_bytes=24)
    bucket = sim_buckets([5, 7])[0]
    bucket.flat[...] = np.arange(bucket.flat.size) + 1.0
    before = bucket.flat.copy()
    seen = []

    def doubling_hook(state, host_bucket):
        seen.append(host_bucket.flat.copy())
        host_bucket.flat *= 2

    ready = sim.record_event(sim.compute_stream())
    reducer.submit(bucket, ready, check=True, hook=doubling_hook).wait()
    np.testing.assert_array_equal(seen[0], before)  # the host copy was complete when the hook ran
    np.testing.assert_array_equal(bucket.flat, before)  # not yet waited for: stale, as a GPU would be
    sim.compute_stream().wait_event(bucket.reduced_event)
    np.testing.assert_array_equal(bucket.flat, 2 * before)
    reducer.submit(bucket, sim.record_event(sim.compute_stream()), check=False).wait()  # chunked, no hook
    sim.compute_stream().wait_event(bucket.reduced_event)
    np.testing.assert_array_equal(bucket.flat, 2 * before)  # the mean over one rank
    reducer.stop()


def test_chunks_cover_the_bucket_exactly():
    reducer = da.DeviceAllreduce(LocalCommunicator(), device.get("sim"), chunk_bytes=32)
    parts = reducer._chunks(21, 8)
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 21)]
    reducer.stop()


def test_a_cupy_array_is_staged_through_the_host_unless_the_backend_is_cuda_aware_and_synchronized():
    """CuPy arrays on unowned memory need no driver: enough to see the communicator's dispatch."""
    cupy = pytest.importorskip("cupy")
    host = np.zeros(8, np.float32)
    memory = cupy.cuda.UnownedMemory(host.ctypes.data, host.nbytes, host, device_id=0)
    array = cupy.ndarray((8,), np.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
    comm = LocalCommunicator()
    assert comm._staged(array) and not comm._staged(host)
    comm.cuda_aware = True  # then MPI reads the device itself, after the stream is synchronized: no driver here
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError):
        comm._staged(array)


def test_ranks_that_would_take_different_paths_are_refused_on_every_rank():
    result = run("zmq", 2, "path_agreement.py", timeout=60)
    assert result.ok(), str(result)
    said = "".join(result.outputs)
    for rank in (0, 1):
        assert f"rank {rank}: the ranks' gradient allreduce paths or devices differ (rank 0: auto on sim; " \
               "rank 1: staging on sim)" in said, said
