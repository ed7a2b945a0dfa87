"""The communicators: every collective on real processes (MPI under mpiexec, ZeroMQ on loopback), and the faults."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import distdl as dl
from distdl.comm import LocalCommunicator, choose_backend, security
from multiproc import WORKERS, ZMQJob, run, run_mpi, run_zmq

BACKENDS = ["mpi", "zmq"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_collective_op_and_dtype_against_numpy(backend, size):
    result = run(backend, size, "collectives.py", backend, timeout=180)
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("collectives ok") == size


@pytest.mark.parametrize("backend", BACKENDS)
def test_iallreduce_progresses_while_the_caller_computes(backend):
    result = run(backend, 2, "faults.py", "overlap", timeout=90)
    assert result.ok(), str(result)


def test_local_world_is_the_identity_with_the_same_checks():
    with LocalCommunicator() as comm:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        for op in ("sum", "mean", "max", "min", "prod"):
            assert comm.allreduce(x.copy(), op).tolist() == x.tolist()
        comm.iallreduce(x).wait()
        assert comm.allgather(x).shape == (1, 2, 3)
        assert comm.gather(x, root=0).shape == (1, 2, 3)
        assert comm.reduce_scatter(x).tolist() == x.ravel().tolist()
        assert comm.broadcast_json({"a": [1, 2]}) == {"a": [1, 2]}
        assert comm.allgather_json("x") == ["x"]
        assert [rows.tolist() for rows in comm.allgather_ragged(x)] == [x.tolist()]
        with pytest.raises(ValueError, match="at least one dimension"):
            comm.allgather_ragged(np.float32(1.0).reshape(()))
        comm.barrier()
        with pytest.raises(TypeError, match="does not support dtype uint8"):
            comm.allreduce(np.zeros(3, np.uint8))
        with pytest.raises(ValueError, match="C-contiguous"):
            comm.allreduce(np.zeros((4, 4))[:, 1])
        with pytest.raises(ValueError, match="unknown op 'avg'"):
            comm.allreduce(x, "avg")
        with pytest.raises(ValueError, match="root 1 is not a rank of this world of 1"):
            comm.broadcast(x, root=1)
        with pytest.raises(TypeError, match="takes an array, got list"):
            comm.allreduce([1.0, 2.0])
    with pytest.raises(dl.DistError, match="closed"):
        comm.allreduce(x)


@pytest.mark.parametrize("env,expected", [
    ({}, "local"),
    ({"PMI_RANK": "0"}, "mpi"),
    ({"OMPI_COMM_WORLD_RANK": "1"}, "mpi"),
    ({"DISTDL_BACKEND": "zmq"}, "zmq"),
    ({"DISTDL_BACKEND": "mpi"}, "mpi"),
])
def test_auto_backend_reads_the_environment(monkeypatch, env, expected):
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "DISTDL_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert choose_backend("auto")[0] == expected
    assert choose_backend("zmq")[0] == "zmq"
    with pytest.raises(ValueError, match="unknown backend 'nccl2'"):
        choose_backend("nccl2")


def test_zmq_receives_spin_only_where_the_io_thread_has_a_core_of_its_own(monkeypatch):
    from distdl.comm import zmq_backend

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("DISTDL_ZMQ_SPIN_US", raising=False)
    assert zmq_backend.spin_seconds(1) == (zmq_backend.SPIN_SECONDS if cores >= 2 else 0.0)
    assert zmq_backend.spin_seconds(cores) == 0.0  # a rank per core: no core left for the I/O threads
    monkeypatch.setenv("DISTDL_ZMQ_SPIN_US", "50")
    assert zmq_backend.spin_seconds(cores) == pytest.approx(50e-6)
    monkeypatch.setenv("DISTDL_ZMQ_SPIN_US", "fast")
    with pytest.raises(ValueError, match=r"DISTDL_ZMQ_SPIN_US='fast': give the microseconds"):
        zmq_backend.spin_seconds(1)


def failures(result):
    """Each failed rank's last line: the error it raised."""
    return [out.strip().splitlines()[-1] if out.strip() else "" for out in result.outputs]


def test_zmq_rank_that_never_joins_is_named_by_the_others():
    result = run_zmq(3, "faults.py", "plain", collective_timeout=3, timeout=60, ranks=[0, 1])
    for line in failures(result):
        assert re.search(r"RendezvousError: .*ranks \[2\] did not join within 3 s", line), str(result)


def test_zmq_wrong_run_token_is_refused_to_that_worker_alone():
    """A wrong token is a stranger's: refused and logged, while rank 0 waits on for its genuine rank 1."""
    result = run_zmq(2, "faults.py", "plain", collective_timeout=3, timeout=60,
                     env_for_rank=lambda r: {"DISTDL_RUN_ID": "someone-else"} if r == 1 else {})
    assert result.returncodes[0] != 0 and result.returncodes[1] != 0
    lines = failures(result)
    assert "rank 0's rendezvous refused a connection from 127.0.0.1: a wrong proof of the run token" in \
        result.outputs[0], str(result)
    assert re.search(r"RendezvousError: rank 0: ranks \[1\] did not join within 3 s .*refused 1 connection", lines[0])
    assert "RendezvousError: rank 1: refused by the process at" in lines[1] and "wrong proof" in lines[1], str(result)


def test_zmq_duplicate_rank_is_refused():
    result = run_zmq(3, "faults.py", "plain", collective_timeout=10, timeout=60,
                     env_for_rank=lambda r: {"DISTDL_RANK": 1} if r == 2 else {})
    assert "registered twice" in "".join(result.outputs), str(result)
    assert not result.ok()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_shapes_fail_with_both_calls_named(backend):
    result = run(backend, 2, "faults.py", "mismatch", collective_timeout=10, timeout=60)
    output = "".join(result.outputs)
    assert not result.ok()
    assert "CollectiveMismatchError" in output, output
    assert "allreduce #1 (sum, float32, 10 elements)" in output and "allreduce #1 (sum, float32, 11 elements)" in output


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_killed_mid_allreduce_ends_the_others(backend):
    result = run(backend, 3, "faults.py", "die", collective_timeout=30, timeout=60)
    assert not result.ok()
    if backend == "zmq":
        assert result.returncodes[1] == -9
        for rank in (0, 2):
            assert result.returncodes[rank] != 0
            assert "PeerLostError" in result.outputs[rank] and "went away during allreduce" in result.outputs[rank], \
                str(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_peer_that_never_calls_times_out_with_a_named_collective(backend):
    result = run(backend, 2, "faults.py", "stall", collective_timeout=2, timeout=60)
    output = "".join(result.outputs)
    assert not result.ok()
    assert "CollectiveTimeoutError: rank 0: allreduce #1 (sum, float64, 10 elements) waited 2 s" in output, output
    if backend == "zmq":
        assert "for rank 1" in output


def test_a_rendezvous_cookie_is_valid_at_once_on_its_connection_only_and_not_once_it_expired():
    cookies = security.Cookies(lifetime=0.2)
    assert all(cookies.valid(b"route-a", cookies.issue(b"route-a")) for _ in range(2000))  # at once, as a fast
    fresh = [cookies.issue(b"route-a") for _ in range(10)]  # rank's answer comes: a rounded issue time failed half
    assert not any(cookies.valid(b"route-b", cookie) for cookie in fresh)
    assert not cookies.valid(b"route-a", fresh[0].replace(":", ":0", 1)) and not cookies.valid(b"route-a", "1:2")
    time.sleep(0.3)
    assert not cookies.valid(b"route-a", fresh[-1])


def test_init_is_idempotent_and_local_by_default(monkeypatch):
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "DISTDL_BACKEND", "DISTDL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dl.shutdown()
    comm = dl.init()
    assert dl.init() is comm and comm.backend == "local"
    assert (dl.rank(), dl.world_size(), dl.local_rank()) == (0, 1, 0)
    with pytest.raises(RuntimeError, match="already initialised with the local backend"):
        dl.init(backend="zmq")
    dl.shutdown()
    assert os.environ.get("DISTDL_BACKEND") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_reduced_over_real_ranks_equal_the_whole_set(backend):
    result = run(backend, 3, "metrics_shards.py", timeout=90)
    assert result.ok(), str(result)
    assert "".join(result.outputs).count("metrics over shards ok") == 3


def appeared(path, seconds):
    """Whether ``path`` exists within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for(path, seconds=60):
    assert appeared(path, seconds), f"{path.name} did not appear within {seconds} s"


def stranger(*args):
    return subprocess.Popen([sys.executable, str(WORKERS / "stranger.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout):
    """The output of ``process`` once it ended; killed first if it has not ended within ``timeout``."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0] + "[killed by the test]"


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A run of a job whose rank 1 registered through a stranger's relay: its run token and the recorded bytes."""
    directory = tmp_path_factory.mktemp("recorded")
    capture = directory / "capture.bin"
    job = ZMQJob(2, "faults.py", "plain", ranks=[0])
    relay = stranger("proxy", directory, job.port, capture)
    wait_for(directory / "proxy-port")
    job.env_for_rank = lambda r: {"DISTDL_MASTER_PORT": (directory / "proxy-port").read_text()}
    job.start(1)
    result = job.finish(60)
    finish(relay, 30)
    assert result.ok(), str(result)
    assert b"register" in capture.read_bytes()
    return job.run_id, capture


@pytest.mark.parametrize("size", [2, 3])
def test_a_stranger_without_the_token_gets_nothing_in(size, tmp_path, recorded_run):
    """Garbage, oversized and forged frames, a replayed run, wrong and malformed registrations, 200 idle
    connections: the job computes exactly, holds its memory, logs the refusals, and exits 0."""
    run_id, capture = recorded_run
    job = ZMQJob(size, "exact_job.py", tmp_path, ranks=[0], run_id=run_id, collective_timeout=30)
    attackers = [stranger("rendezvous", tmp_path, job.port, capture)]
    try:
        wait_for(tmp_path / "rendezvous-attacked")
        for rank in range(1, size):
            job.start(rank)
        for rank in range(size):
            wait_for(tmp_path / f"rank-{rank}.json")
        attackers.append(stranger("inboxes", tmp_path, capture))
        attacked = appeared(tmp_path / "inboxes-attacked", 150)
        time.sleep(1)  # the job goes on under the 200 idle connections
    finally:
        (tmp_path / "stop").touch()
        result = job.finish(60)
        stranger_output = [finish(a, 30) for a in attackers]
    assert attacked, "the inbox attack did not end within 150 s:\n" + stranger_output[-1]
    assert result.ok(), str(result) + "\n".join(stranger_output)
    assert listening(job_sockets(tmp_path, size)[0]) == []
    assert "refused as expected: RendezvousError" in stranger_output[0]
    for rank, output in enumerate(result.outputs):
        growth = float(re.search(r"exact rounds, rss growth (-?[\d.]+) MB", output).group(1))
        assert growth < 50, output
        assert "inbox refused a connection from 127.0.0.1: a PLAIN handshake without a credential" in output, output
        assert "inbox refused a connection at tcp://127.0.0.1" in output and "failed the ZeroMQ handshake" in output
    rendezvous_log = result.outputs[0]
    for refusal in ("a wrong proof of the run token", "a message that is not a distdl registration",
                    "a registration without a valid challenge of this connection"):
        assert f"rank 0's rendezvous refused a connection from 127.0.0.1: {refusal}" in rendezvous_log, rendezvous_log


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("collective", ["broadcast", "gather"])
def test_different_roots_are_a_named_mismatch_on_every_rank(backend, collective):
    result = run(backend, 3, "transport_faults.py", f"{collective}_roots", collective_timeout=20, timeout=60)
    output = "".join(result.outputs)
    assert not result.ok()
    for rank in range(3):
        line = re.search(rf"rank {rank} after [\d.]+ s: CollectiveMismatchError: (.*)", output)
        assert line, output
        assert all(f"rank {r}: {collective} #2 (float64, 5 elements) root {r}" in line.group(1) for r in range(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_while_a_peer_is_in_another_collective_fails_both_within_a_second(backend):
    result = run(backend, 2, "transport_faults.py", "close", collective_timeout=20, timeout=60)
    output = "".join(result.outputs)
    assert not result.ok()
    for rank in (0, 1):
        line = re.search(rf"rank {rank} after ([\d.]+) s: CollectiveMismatchError: (.*)", output)
        assert line and float(line.group(1)) < 1.0, output
        assert "allreduce #2 (sum, float64, 10 elements)" in line.group(2) and "barrier #2" in line.group(2), output
    assert "rank 1 is closing its communicator (dl.shutdown(), or the end of the script)" in output, output


def test_ending_the_script_unclosed_runs_the_checked_barrier_and_exits_1():
    result = run_zmq(2, "transport_faults.py", "exit", collective_timeout=20, timeout=60)
    assert result.returncodes == [3, 1], str(result)
    assert re.search(r"rank 0 after 0\.\d+ s: CollectiveMismatchError: .*barrier #2", result.outputs[0]), str(result)
    assert "CollectiveMismatchError" in result.outputs[1] and "allreduce #2" in result.outputs[1], str(result)


def test_a_bad_frame_of_an_admitted_peer_is_a_protocol_error_naming_it():
    result = run_zmq(2, "transport_faults.py", "bad_frame", collective_timeout=20, timeout=60)
    assert re.search(r"rank 0 after [\d.]+ s: ProtocolError: rank 0: in allreduce #2 \(sum, float64, 10 elements\) "
                     r"rank 1 sent 8 bytes for allreduce #2 .* where 10 float64 elements \(80 bytes\) belong",
                     result.outputs[0]), str(result)


def test_mpi_script_ending_unclosed_is_a_failure_too():
    result = run_mpi(2, "transport_faults.py", "exit", collective_timeout=20, timeout=60)
    assert not result.ok() and "CollectiveMismatchError" in "".join(result.outputs), str(result)


def test_zmq_under_load_with_a_rank_paused_every_second(tmp_path):
    """3 ranks, 0 B to 64 MiB, rank 1 stopped for 0.3 s every second (20 s of it, not the issue's 60 s, to keep the
    suite lean), DISTDL_TIMEOUT=60: slow sends are no error, every result exact."""
    job = ZMQJob(3, "exact_job.py", tmp_path, 64, collective_timeout=60)
    pauses = 0
    try:
        for rank in range(3):
            wait_for(tmp_path / f"rank-{rank}.json")
        end = time.monotonic() + 20
        while time.monotonic() < end and job.procs[1].poll() is None:
            time.sleep(0.7)
            job.procs[1].send_signal(signal.SIGSTOP)
            time.sleep(0.3)
            job.procs[1].send_signal(signal.SIGCONT)
            pauses += 1
    finally:
        job.procs[1].send_signal(signal.SIGCONT)
        (tmp_path / "stop").touch()
        result = job.finish(120)
    assert result.ok(), str(result)
    assert pauses >= 15
    rounds = [int(re.search(r"(\d+) exact rounds", output).group(1)) for output in result.outputs]
    assert rounds[0] == rounds[1] == rounds[2] > 6, rounds  # the 64 MiB allreduce, at least once


def job_sockets(directory, size):
    """The abstract ipc names the ranks of a job listened at (they leave no file), and the socket files in /tmp."""
    names = [json.loads((directory / f"rank-{rank}.json").read_text())["ipc"][len("ipc://@"):] for rank in range(size)]
    return names, socket_files()


def socket_files():
    """distdl's socket files in /tmp (other distdl files, e.g. a concurrent launcher's, are not this test's)."""
    return set(Path(tempfile.gettempdir()).glob("distdl-*.sock"))


def listening(names):
    table = Path("/proc/net/unix").read_text()
    return [name for name in names if "@" + name in table]


def test_no_socket_of_a_job_remains_after_it_was_killed(tmp_path):
    files_before = socket_files()
    job = ZMQJob(2, "exact_job.py", tmp_path)
    try:
        for rank in range(2):
            wait_for(tmp_path / f"rank-{rank}.json")
        names, files = job_sockets(tmp_path, 2)
        assert listening(names) == names and files == files_before
        job.procs[1].kill()
    finally:
        result = job.finish(60)
    assert result.returncodes[1] == -9 and "PeerLostError" in result.outputs[0], str(result)
    assert listening(names) == [] and socket_files() == files_before


def test_the_hierarchical_plan_groups_ranks_by_node_where_every_node_has_the_same_several_ranks():
    from distdl.comm.hierarchical import Plan, plan

    hosts = ["a", "a", "b", "b", "c", "c"]
    assert plan(hosts, 3) == Plan(local=[2, 3], across=[1, 3, 5])  # node b's ranks; local index 1 of every node
    assert plan(["b", "a", "b", "a"], 1) == Plan(local=[1, 3], across=[0, 1])  # nodes in order of their first rank
    assert plan(hosts, 3, "off") is None
    for flat in (["a", "a", "a"], ["a", "b", "c"], ["a", "a", "b"]):  # one node; one rank per node; uneven nodes
        assert plan(flat, 0) is None
    with pytest.raises(ValueError, match="DISTDL_ZMQ_HIERARCHICAL='yes': give one of auto, on, off"):
        plan(hosts, 0, "yes")
