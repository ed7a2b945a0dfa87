"""The ZeroMQ backend's shared-memory allreduce between ranks of one host, on real processes.

Each job makes its segments in a directory of its own under /dev/shm (DISTDL_ZMQ_SHM_DIR), so that
what a job leaves there is seen exactly, whatever other jobs on the machine do. Small slots
(DISTDL_ZMQ_SHM_BYTES) give many chunks per allreduce, and pieces of every length.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from distdl.comm import shared_memory
from multiproc import WORKERS, run_zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import cluster as emulated  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")


@pytest.fixture
def segment_dir():
    path = tempfile.mkdtemp(prefix="distdl-test-", dir="/dev/shm")
    yield path
    shutil.rmtree(path)


def run_job(size, scenario, segment_dir, env_for_rank=None, **options):
    def env(rank):
        extra = {"DISTDL_ZMQ_SHM_DIR": segment_dir, "DISTDL_ZMQ_SHM_BYTES": 6000}
        extra.update(env_for_rank(rank) if env_for_rank else {})
        return extra

    return run_zmq(size, "shared_memory_job.py", scenario, env_for_rank=env, **options)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_every_dtype_and_op_is_exact_over_many_chunks_and_no_segment_outlives_its_mapping(size, segment_dir):
    result = run_job(size, "exact", segment_dir, timeout=240)
    assert result.ok(), str(result)
    assert "rank 0: shared memory mapped; 0 files left" in result.outputs[0], str(result)
    assert os.listdir(segment_dir) == []


def test_allreduces_of_alternating_dtypes_are_exact_at_three_ranks(segment_dir):
    """4096-byte slots: a third of one is 341 float32 elements but 170 float64, so regions counted in elements
    would move by 4 bytes from one dtype to the other."""
    result = run_job(3, "dtypes", segment_dir, lambda rank: {"DISTDL_ZMQ_SHM_BYTES": 4096}, timeout=120)
    assert result.ok(), str(result)


def test_a_rank_without_shared_memory_makes_every_rank_use_ipc_and_says_so_once(segment_dir):
    result = run_job(3, "fallback", segment_dir, timeout=240,
                     env_for_rank=lambda rank: {"DISTDL_ZMQ_SHM_DIR": "/nonexistent/distdl"} if rank == 1 else {})
    assert result.ok(), str(result)
    for rank, output in enumerate(result.outputs):
        assert f"rank {rank}: shared memory not used" in output, str(result)
        assert output.count("no shared memory among ranks [0, 1, 2]") == 1, str(result)
    assert "cannot make a segment in /nonexistent/distdl" in result.outputs[1]
    assert os.listdir(segment_dir) == []


def test_a_peer_segment_of_another_size_is_refused_on_every_rank(segment_dir):
    result = run_job(2, "exact", segment_dir, timeout=60,
                     env_for_rank=lambda rank: {"DISTDL_ZMQ_SHM_BYTES": 8192} if rank == 1 else {})
    assert result.returncodes[0] != 0 and result.returncodes[1] != 0, str(result)
    assert "rank 1's shared-memory segment" in result.outputs[0] and "has 20480 bytes where this rank expects " \
        "16096" in result.outputs[0], str(result)
    assert "has 16096 bytes where this rank expects 20480" in result.outputs[1], str(result)
    assert os.listdir(segment_dir) == []


def test_a_rank_with_shared_memory_off_is_refused_on_every_rank_naming_the_setting(segment_dir):
    result = run_job(3, "exact", segment_dir, timeout=60,
                     env_for_rank=lambda rank: {"DISTDL_ZMQ_SHM_BYTES": 0} if rank == 2 else {})
    assert all(code != 0 for code in result.returncodes), str(result)
    for rank in (0, 1):
        assert f"rank {rank}: shared memory is on here (DISTDL_ZMQ_SHM_BYTES=6000 for 3 ranks) and off for " \
            "rank(s) [2]" in result.outputs[rank], str(result)
    assert "rank 2: shared memory is off here (DISTDL_ZMQ_SHM_BYTES=0 for 3 ranks) and on for rank(s) [0, 1]" in \
        result.outputs[2], str(result)
    assert os.listdir(segment_dir) == []


def test_shared_memory_off_on_every_rank_gives_exact_results_over_ipc(segment_dir):
    result = run_job(3, "exact", segment_dir, timeout=120, env_for_rank=lambda rank: {"DISTDL_ZMQ_SHM_BYTES": 0})
    assert result.ok(), str(result)
    assert "rank 0: shared memory not used; 0 files left" in result.outputs[0], str(result)
    assert os.listdir(segment_dir) == []


def test_a_rank_killed_mid_allreduce_ends_the_others_and_leaves_no_segment(segment_dir):
    result = run_job(3, "die", segment_dir, collective_timeout=30, timeout=60)
    assert result.returncodes[1] == -9, str(result)
    for rank in (0, 2):
        assert result.returncodes[rank] != 0
        assert "PeerLostError" in result.outputs[rank] and "went away during allreduce" in result.outputs[rank], \
            str(result)
    assert os.listdir(segment_dir) == []


def test_a_peer_that_stalls_in_a_shared_memory_allreduce_times_out_naming_it(segment_dir):
    result = run_job(2, "stall", segment_dir, collective_timeout=2, timeout=60)
    assert not result.ok()
    assert "CollectiveTimeoutError: rank 0: allreduce #" in result.outputs[0] and "for rank 1" in result.outputs[0], \
        str(result)


@pytest.mark.parametrize("scenario, other_call", [("mismatch", "allreduce #2 (sum, float32, 300001 elements)"),
                                                  ("mismatch_barrier", "barrier #2")])
def test_a_rank_in_another_call_fails_with_both_calls_named(scenario, other_call, segment_dir):
    """Both ranks in shared memory with different sizes; or rank 1 in a barrier, whose message rank 0 sees."""
    result = run_job(2, scenario, segment_dir, collective_timeout=20, timeout=60)
    assert not result.ok()
    for output in result.outputs if scenario == "mismatch" else result.outputs[:1]:
        assert "CollectiveMismatchError" in output, str(result)
        assert "allreduce #2 (sum, float32, 300000 elements)" in output and other_call in output, str(result)
    if scenario == "mismatch_barrier":  # rank 1 waits in its barrier for rank 0, which raised
        assert "PeerLostError" in result.outputs[1] and "went away during barrier #2" in result.outputs[1], str(result)


def test_the_hierarchical_allreduce_reduces_in_the_nodes_shared_memory_exactly_over_many_chunks(segment_dir):
    """2 emulated nodes x 2 ranks: the in-node reduce-scatter and allgather alternate two slots, chunk by chunk."""
    try:
        emulated.check_can_build()
    except emulated.ClusterError as exc:
        pytest.skip(str(exc))
    env = dict(os.environ, DISTDL_ZMQ_SHM_BYTES="6000", DISTDL_ZMQ_SHM_DIR=segment_dir)
    with emulated.Cluster(2, "1gbit") as cluster:
        procs = cluster.start_job([sys.executable, "-m", "launcher", "-n", "2", "--timeout", "30",
                                   str(WORKERS / "cluster_allreduce.py")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "".join(outputs).count("allreduce exact (hierarchical: 2 nodes x 2 ranks)") == 4, outputs
    assert "no shared memory" not in "".join(outputs) and os.listdir(segment_dir) == []


def test_a_bad_slot_size_says_what_is_wanted(monkeypatch):
    monkeypatch.setenv("DISTDL_ZMQ_SHM_BYTES", "4M")
    with pytest.raises(ValueError, match="DISTDL_ZMQ_SHM_BYTES='4M': give a number of bytes, at least 4096"):
        shared_memory.slot_bytes()
    monkeypatch.setenv("DISTDL_ZMQ_SHM_BYTES", "0")
    assert shared_memory.slot_bytes() == 0


def test_a_segment_is_a_private_file_reserved_in_full(monkeypatch, segment_dir):
    monkeypatch.setenv("DISTDL_ZMQ_SHM_DIR", segment_dir)
    path, mapped, reason = shared_memory._create(12000)
    try:
        info = os.stat(path)
        assert reason is None and info.st_mode & 0o777 == 0o600 and info.st_uid == os.getuid()
        assert info.st_size == 12000 and info.st_blocks * 512 >= 12000  # the pages are there, not a sparse file
        with pytest.raises(FileExistsError):
            os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        os.chmod(path, 0o644)
        token = os.path.basename(path)[len(shared_memory.PREFIX):].encode()
        with pytest.raises(Exception, match="is not a private file of this user's"):
            shared_memory._open(token, 12000, 1, 0)
        with pytest.raises(Exception, match="not one distdl makes"):
            shared_memory._open(b"../" + token[3:], 12000, 1, 0)
        assert np.frombuffer(mapped, np.uint8).size == 12000
    finally:
        mapped.close()
        os.unlink(path)
