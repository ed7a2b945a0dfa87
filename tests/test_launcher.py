"""distdl-run with real processes: failures end the whole job with the root cause, signals reach every worker,
restarts resume from checkpoints bit-identically, and two launchers form one job across "nodes" on loopback."""

import glob
import hashlib
import hmac
import io
import json
import mmap
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import loopback
from launcher import secret, shm, wire
from multiproc import WORKERS, alive, free_port

BACKENDS = ["mpi", "zmq"]


def distdl_run(*args, timeout=90, **popen):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **popen)


def pids_in(text):
    return [int(p) for p in re.findall(r"pid (\d+) rank", text)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_rank_runs_with_the_environment_contract(backend, tmp_path):
    result = distdl_run("-n", 3, "--backend", backend, "--log-dir", tmp_path, WORKERS / "launched.py", "ok")
    assert result.returncode == 0, result.stderr
    for rank in range(3):
        assert f"[rank {rank}] rank {rank} sum 3 backend {backend}" in result.stdout
        assert f"rank {rank} sum 3" in (tmp_path / f"rank-{rank}.log").read_text()


def test_one_worker_needs_no_communication():
    result = distdl_run("-n", 1, "--no-tag-output", WORKERS / "launched.py", "ok")
    assert result.returncode == 0, result.stderr
    assert "rank 0 sum 1 backend local" in result.stdout and "[rank" not in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_in_one_worker_ends_the_job_with_its_traceback(backend):
    start = time.monotonic()
    result = distdl_run("-n", 3, "--backend", backend, WORKERS / "launched.py", "raise")
    assert time.monotonic() - start < 30
    assert result.returncode != 0
    assert re.search(r"root cause: rank 1 on \S+ raised ValueError", result.stderr), result.stderr
    assert "ValueError: boom from rank 1" in result.stderr
    assert "stopped ranks 0, 2 because of it" in result.stderr
    assert not [p for p in pids_in(result.stdout) if alive(p)]


def test_a_failed_mpi_job_leaves_no_shared_memory_segment_of_its_own():
    """MPICH unlinks its segments only at MPI_Finalize: an aborted job left a few MiB in /dev/shm each time."""
    before = set(glob.glob("/dev/shm/mpich_shm_*"))
    result = distdl_run("-n", 2, "--backend", "mpi", WORKERS / "launched.py", "raise")
    assert result.returncode != 0 and "ValueError: boom from rank 1" in result.stderr, result.stderr
    assert set(glob.glob("/dev/shm/mpich_shm_*")) - before == set()


def test_an_attempts_cleanup_takes_only_the_unmapped_segments_it_made(tmp_path):
    since = time.time()
    left = "distdl-" + "ab" * 16
    for name in ("mpich_shm_1a2b_0", "mpich_shm_3c4d_0", left, "distdl-notes", "someone_elses"):
        (tmp_path / name).write_bytes(bytes(4096))
    (tmp_path / ("distdl-" + "cd" * 16)).mkdir()  # a directory with a segment's name (a test's) stays
    with open(tmp_path / "mpich_shm_1a2b_0", "r+b") as f, mmap.mmap(f.fileno(), 4096):
        assert sorted(shm.remove_leftovers(since, str(tmp_path))) == [str(tmp_path / left),
                                                                      str(tmp_path / "mpich_shm_3c4d_0")]
    assert sorted(os.listdir(tmp_path)) == ["distdl-" + "cd" * 16, "distdl-notes", "mpich_shm_1a2b_0",
                                            "someone_elses"]
    assert shm.leftovers(time.time() + 10, str(tmp_path)) == []  # made before the attempt began: not its own


def test_the_rank_that_raised_first_is_the_one_named_although_its_peer_ended_first():
    # Rank 1 raises and tells rank 0 it leaves, then lingers; rank 0 dies of the lost peer and its process ends
    # first (under ZeroMQ; MPI's rank 0 waits to be stopped). Every line must tell the same story: rank 1.
    result = distdl_run("-n", 2, "--backend", "zmq", "--max-restarts", 1, "--timeout", 20, WORKERS / "launched.py",
                        "raise_and_linger", timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout.count("PeerLostError: rank 0: rank 1 went away") == 2, result.stdout  # the race happened
    attempt = [r"root cause: rank 1 on \S+ raised ValueError at [\d:]+, exit code 1 \(its traceback is above.*",
               r"ValueError: boom from rank 1", r"stopped rank 0 because of it"]
    expected = attempt + [r"restarting the job \(1 of 1 restarts\) after rank 1 failed with exit code 1, from .*"] + \
        attempt + [r"giving up after 1 restart: rank 1 failed with exit code 1"]
    lines = [line.removeprefix("distdl-run: ") for line in result.stderr.splitlines()]
    assert len(lines) == len(expected) and all(map(re.fullmatch, expected, lines)), result.stderr
    assert not [p for p in pids_in(result.stdout) if alive(p)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_killed_by_a_signal_ends_the_job_within_seconds(backend):
    start = time.monotonic()
    result = distdl_run("-n", 3, "--backend", backend, WORKERS / "launched.py", "kill")
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 15, elapsed  # the others sleep for 600 s: the launcher stopped them
    assert "rank 1 failed with signal SIGKILL" in result.stderr, result.stderr  # by rank under mpiexec too
    assert "stopped ranks 0, 2 because of it" in result.stderr
    assert "BAD TERMINATION" not in result.stdout and "[mpiexec]" not in result.stdout  # distdl-run's summary alone
    pids = pids_in(result.stdout)
    assert len(pids) == 3 and not [p for p in pids if alive(p)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_launcher_reaches_every_worker(backend, sig):
    launcher = subprocess.Popen([sys.executable, "-m", "launcher", "-n", "2", "--backend", backend,
                                 str(WORKERS / "launched.py"), "sleep"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    pids = []
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids += pids_in(launcher.stdout.readline())
    launcher.send_signal(sig)
    out, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 128 + sig, err
    assert f"received {signal.Signals(sig).name}: stopped every worker" in err
    assert "BAD TERMINATION" not in out and "problem with your application" not in out + err
    time.sleep(0.2)
    assert len(pids) == 2 and not [p for p in pids if alive(p)]


def job_pids(text):
    """Every PID a launcher_children.py worker printed: itself, its keeper, its plain and its setsid child."""
    return [int(p) for line in re.findall(r"job pids ([\d ]+)", text) for p in line.split()]


def survivors(pids, within):
    """The PIDs still alive after waiting up to ``within`` seconds for them to end."""
    deadline = time.monotonic() + within
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario, report", [("succeed", ""), ("raise", "raised ValueError"),
                                              ("kill", "rank 1 failed with signal SIGKILL")])
def test_no_process_a_worker_started_outlives_the_job(backend, scenario, report):
    """Each worker leaves a plain and a setsid child that hold its stdout; the job ends anyway, and they with it."""
    result = distdl_run("-n", 2, "--backend", backend, "--timeout", 20, WORKERS / "launcher_children.py", scenario,
                        timeout=60)
    assert (result.returncode == 0) == (scenario == "succeed"), result.stderr
    assert report in result.stderr
    pids = job_pids(result.stdout)
    assert len(pids) == 8, result.stdout
    assert not survivors(pids, within=0), "still running after distdl-run returned"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_launcher_killed_by_sigkill_takes_every_process_of_the_job_with_it(backend):
    launcher = subprocess.Popen([sys.executable, "-m", "launcher", "-n", "2", "--backend", backend,
                                 str(WORKERS / "launcher_children.py"), "hang"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    pids, deadline = [], time.monotonic() + 60
    while len(pids) < 8 and time.monotonic() < deadline:
        pids += job_pids(launcher.stdout.readline())
    launcher.kill()
    launcher.wait(timeout=10)
    assert len(pids) == 8
    assert not survivors(pids, within=15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_that_exits_with_code_0_before_it_completes_fails_the_job(backend):
    result = distdl_run("-n", 2, "--backend", backend, "--timeout", 20, WORKERS / "launcher_children.py", "exit0",
                        timeout=60)
    assert result.returncode != 0
    assert "rank 1 ended (exit code 0) without completing" in result.stderr, result.stderr
    assert not survivors(job_pids(result.stdout), within=0)


def final_digest(output):
    return re.search(r"final digest (\w+)", output).group(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_and_a_restart_end_bit_identical_to_a_run_without_the_crash(backend, tmp_path):
    plain = distdl_run("-n", 2, "--backend", backend, "--checkpoint-dir", tmp_path / "a", WORKERS / "resume.py")
    assert plain.returncode == 0, plain.stderr
    crashed = distdl_run("-n", 2, "--backend", backend, "--checkpoint-dir", tmp_path / "b", "--max-restarts", 1,
                         WORKERS / "resume.py", "--crash-at", 7)
    assert crashed.returncode == 0, crashed.stderr
    assert "restarting the job (1 of 1 restarts) after rank 1 failed" in crashed.stderr
    assert "resumed at step 6" in crashed.stdout
    assert final_digest(crashed.stdout) == final_digest(plain.stdout)


def test_without_restarts_left_the_job_fails(tmp_path):
    result = distdl_run("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path, WORKERS / "resume.py",
                        "--crash-at", 3)
    assert result.returncode != 0 and "RuntimeError: crash at step 3" in result.stderr


def test_dry_run_prints_the_plan_and_starts_nothing():
    result = distdl_run("-n", 2, "--backend", "zmq", "--dry-run", "train.py", "--lr", "0.1")
    assert result.returncode == 0
    assert "rank 1: " in result.stdout and "train.py --lr 0.1" in result.stdout
    assert "DISTDL_WORLD_SIZE=2" in result.stdout and "DISTDL_LOCAL_RANK=1" in result.stdout


SECRET = "a test job secret, the same on every node"


def start_node(node_rank, port, script_args, nproc=2, script="launched.py", options=(), secret=SECRET):
    return subprocess.Popen([sys.executable, "-m", "launcher", "--nnodes", "2", "--node-rank", str(node_rank),
                             "--master-port", str(port), "-n", str(nproc), "--timeout", "20", *map(str, options),
                             str(WORKERS / script), *map(str, script_args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, DISTDL_JOB_SECRET=secret))


def test_two_launchers_form_one_job_across_nodes():
    port = free_port()
    nodes = [start_node(rank, port, ["ok"]) for rank in (0, 1)]
    outputs = [n.communicate(timeout=90) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    everything = outputs[0][0] + outputs[1][0]
    for rank in range(4):
        assert f"rank {rank} sum 4 backend zmq" in everything


def test_killing_one_nodes_launcher_ends_the_other_within_seconds():
    port = free_port()
    nodes = [start_node(rank, port, ["sleep"]) for rank in (0, 1)]
    pids = []
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids += pids_in(nodes[0].stdout.readline())
    os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1's launcher and its workers vanish
    start = time.monotonic()
    out, err = nodes[0].communicate(timeout=60)
    assert time.monotonic() - start < 15
    assert nodes[0].returncode != 0
    assert "lost node 1" in err, err
    assert not [p for p in pids if alive(p)]


def test_the_launcher_starts_without_the_engine():
    code = "import sys, launcher.cli; print('numpy' in sys.modules, 'distdl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.split() == ["False", "False"]


def connect(port, deadline):
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def strangers(port):
    """What a process without the job secret might send to node 0's port; each connection on its own."""
    deadline = time.monotonic() + 30
    for payload in (b"garbage\n", b"5\n", b'"hello"\n', b"[1, 2]\n", b'{"node_rank": 1}\n', b"a" * 100_000 + b"\n",
                    b"[" * 60_000 + b"\n"):
        with connect(port, deadline) as s:
            try:
                s.sendall(payload)
                s.recv(1000)  # node 0's hello, then it closes
            except ConnectionResetError:
                pass  # closed with our bytes unread
    with connect(port, deadline) as s:  # a well-formed handshake with the wrong secret
        nonce = json.loads(s.makefile("rb").readline())["nonce"]
        mine = "0" * 32
        fields = json.dumps(["node", nonce, mine, "1"]).encode()
        proof = hmac.new(b"not the job secret", fields, hashlib.sha256).hexdigest()
        s.sendall(json.dumps({"node_rank": 1, "nonce": mine, "proof": proof}).encode() + b"\n")
        assert s.recv(1000) == b"", "node 0 answered a wrong proof"


@pytest.mark.skipif(not loopback.available(), reason="capturing loopback traffic needs root (AF_PACKET)")
def test_strangers_at_the_node_port_are_refused_alone_and_the_secret_never_crosses_the_network():
    port = free_port()
    capture = loopback.Capture(port)
    node0 = start_node(0, port, ["linger"])
    strangers(port)  # while the job forms
    node1 = start_node(1, port, ["linger"])
    started, deadline = "", time.monotonic() + 60
    while started.count("pid ") < 2 and time.monotonic() < deadline:  # node 0's workers run: the job is formed
        started += node0.stdout.readline()
    idle = [connect(port, time.monotonic() + 30) for _ in range(200)]  # held open, never a byte
    time.sleep(5.5)  # the idle ones time out (5 s) while the job runs
    strangers(port)  # while it runs
    outputs = [n.communicate(timeout=90) for n in (node0, node1)]
    for s in idle:
        s.close()
    wire = capture.stop()
    assert [node0.returncode, node1.returncode] == [0, 0], outputs
    everything = started + outputs[0][0] + outputs[1][0]
    for rank in range(4):
        assert f"rank {rank} sum 4 backend zmq" in everything
    refused = outputs[0][1]
    for reason in ("a line that is not JSON", "JSON of the wrong shape (int", "JSON of the wrong shape (str",
                   "JSON of the wrong shape (list", "a handshake of the wrong shape", "a line longer than 64 KiB",
                   "a wrong job secret", "no handshake within", "more than 64 connections were waiting"):
        assert "refused a connection from 127.0.0.1:" in refused and reason in refused, (reason, refused)
    assert refused.count("no handshake within") == 1  # a flood from one address is logged once
    token = re.search(r"run token (\w+)", everything).group(1)
    assert b"distdl_node_port" in wire and b"proof" in wire  # the capture saw the launchers talk
    assert token.encode() not in wire and SECRET.encode() not in wire


def test_a_node_with_the_secret_but_other_options_is_an_error_naming_both():
    port = free_port()
    nodes = [start_node(0, port, ["ok"]), start_node(1, port, ["ok"], nproc=1)]
    outputs = [n.communicate(timeout=60) for n in nodes]
    assert [n.returncode for n in nodes] == [1, 1]
    for _, err in outputs:
        assert re.search(r"node 1 at 127\.0\.0\.1:\d+ has worker count 1 but node 0 has 2", err), err


def test_a_two_node_job_restarts_whole_after_a_crash_on_node_1_and_ends_as_if_uninterrupted(tmp_path):
    plain = distdl_run("-n", 2, "--backend", "zmq", "--checkpoint-dir", tmp_path / "a", WORKERS / "resume.py")
    assert plain.returncode == 0, plain.stderr
    port = free_port()
    options = ["--max-restarts", 1, "--checkpoint-dir", tmp_path / "b"]
    nodes = [start_node(rank, port, ["--crash-at", 7], nproc=1, script="resume.py", options=options)
             for rank in (0, 1)]
    outputs = [n.communicate(timeout=120) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    assert "RuntimeError: crash at step 7" in outputs[1][1]
    assert "restarting the job (1 of 1 restarts) after node 1: rank 1 failed" in outputs[0][1]
    assert "resumed at step 6" in outputs[0][0]
    assert final_digest(outputs[0][0]) == final_digest(plain.stdout)


@pytest.mark.parametrize("line, reason", [(b"garbage\n", "not JSON"), (b"[" * 60_000 + b"\n", "not JSON"),
                                          (b"5\n", "wrong shape"), (b"a" * (wire.MAX_LINE + 1), "longer than 64 KiB"),
                                          (b'{"cut": ', "cut-off line")])
def test_a_line_that_is_not_a_message_is_refused_with_the_reason(line, reason):
    with pytest.raises(wire.Refused, match=reason):
        wire.receive(io.BytesIO(line))


def test_proofs_and_run_tokens_depend_on_the_secret_and_the_nonces(monkeypatch):
    key, other = b"k" * 32, b"o" * 32
    proof = secret.proof(key, "node", "n1", "n2", 1)
    assert secret.verify(key, proof, "node", "n1", "n2", 1)
    assert not secret.verify(other, proof, "node", "n1", "n2", 1)
    assert not secret.verify(key, proof, "coordinator", "n1", "n2", 1)  # a node's proof is not node 0's
    assert not secret.verify(key, proof, "node", "n1", "n3", 1) and not secret.verify(key, None, "node")
    assert secret.proof(key, "node", "a|b", "c") != secret.proof(key, "node", "a", "b|c")  # fields stay apart
    assert secret.run_token(key, "a") == secret.run_token(key, "a") != secret.run_token(key, "b")
    assert secret.run_token(key, "a") != secret.run_token(other, "a")
    monkeypatch.delenv("DISTDL_JOB_SECRET", raising=False)
    assert len(secret.job_secret(1)) == 32  # one node makes its own
    with pytest.raises(secret.SecretError, match="needs the same secret on every node: set DISTDL_JOB_SECRET"):
        secret.job_secret(2)
    monkeypatch.setenv("DISTDL_JOB_SECRET", "short")
    with pytest.raises(secret.SecretError, match="5 bytes; use at least 16"):
        secret.job_secret(2)
