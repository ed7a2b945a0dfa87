"""Launching as HPC and PyTorch users do: torchrun's, mpirun's and horovodrun's options of distdl-run, the variables
each rank gets, the refusals that say what is allowed, the messages of failed and restarted jobs, and rank 0's live
progress bar under a pseudo-terminal. Every job is a real one, under a hard timeout, and leaves no process behind."""

import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import time

import pytest

from distdl.comm import launchers
from multiproc import WORKERS, free_port

BACKENDS = ["mpi", "zmq"]
ENV_LINE = re.compile(r"rank (?P<rank>\d+) of (?P<size>\d+) sum (?P<sum>\S+) backend (?P<backend>\w+) "
                      r"local (?P<local>\d+) of (?P<local_size>\d+) threads \[(?P<threads>[\d, ]*)\] "
                      r"RANK=(?P<RANK>\S+) LOCAL_RANK=(?P<LOCAL_RANK>\S+) WORLD_SIZE=(?P<WORLD_SIZE>\S+) "
                      r"LOCAL_WORLD_SIZE=(?P<LOCAL_WORLD_SIZE>\S+) MASTER_ADDR=(?P<MASTER_ADDR>\S+) "
                      r"MASTER_PORT=(?P<MASTER_PORT>\S+)")


def distdl_run(*args, timeout=90, env=None):
    """distdl-run in its own session; the whole session is killed at ``timeout`` and must be gone afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        out, err = process.communicate()
        pytest.fail(f"distdl-run {args} ran past {timeout} s:\n{out}\n{err}")
    assert not session_left(process.pid)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def session_left(sid):
    """PIDs still in session ``sid`` (distdl-run's: its keepers start sessions of their own, swept at the end)."""
    left = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            left.append(int(entry))
    return left


def ranks_told(output):
    """rank -> what launch_env.py printed there (its world, backend, BLAS threads, torchrun variables)."""
    return {int(m["rank"]): m.groupdict() for m in ENV_LINE.finditer(output)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchruns_options_and_variables(backend):
    result = distdl_run("--nproc_per_node", 2, "--standalone", "--backend", backend, WORKERS / "launch_env.py", "env")
    assert result.returncode == 0, result.stderr
    told = ranks_told(result.stdout)
    assert sorted(told) == [0, 1], result.stdout
    for rank, seen in told.items():
        assert (seen["size"], seen["sum"], seen["backend"]) == ("2", "2", backend)
        assert (seen["RANK"], seen["LOCAL_RANK"], seen["WORLD_SIZE"], seen["LOCAL_WORLD_SIZE"], seen["MASTER_ADDR"]) \
            == (str(rank), str(rank), "2", "2", "127.0.0.1")
    ports = {seen["MASTER_PORT"] for seen in told.values()}
    assert len(ports) == 1 and 0 < int(ports.pop()) < 65536  # the same MASTER_PORT on every rank


def test_mpiruns_np_and_a_rendezvous_endpoint():
    port = free_port()
    result = distdl_run("-np", 2, "--rdzv-endpoint", f"127.0.0.1:{port}", "--backend", "zmq",
                        WORKERS / "launch_env.py", "env")
    assert result.returncode == 0, result.stderr
    told = ranks_told(result.stdout)
    assert sorted(told) == [0, 1] and {seen["MASTER_PORT"] for seen in told.values()} == {str(port)}


def test_auto_is_the_cores_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = distdl_run("--nproc-per-node", "auto", "--backend", "zmq", "--dry-run", "train.py", env=env)
    assert f"world size {len(os.sched_getaffinity(0))}" in result.stdout
    result = distdl_run("--nproc-per-node", "auto", "--dry-run", "train.py", env=dict(os.environ,
                                                                                        CUDA_VISIBLE_DEVICES="0,1,2"))
    assert "world size 3" in result.stdout


@pytest.mark.parametrize("hosts", ["-H", "--hostfile"])
def test_horovodruns_hosts_go_to_mpiexecs_hydra(hosts, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# horovod's form\nlocalhost slots=2\n")
    where = ["-H", "localhost:2"] if hosts == "-H" else ["--hostfile", hostfile]
    plan = distdl_run(*where, "--dry-run", "train.py")
    assert re.search(r"mpiexec -hosts localhost:2 -n 2 ", plan.stdout), plan.stdout
    result = distdl_run(*where, WORKERS / "launch_env.py", "env")  # the slots say how many
    assert result.returncode == 0, result.stderr
    told = ranks_told(result.stdout)
    assert sorted(told) == [0, 1] and {seen["backend"] for seen in told.values()} == {"mpi"}
    assert [(told[r]["RANK"], told[r]["LOCAL_RANK"]) for r in (0, 1)] == [("0", "0"), ("1", "1")]  # by the keepers


@pytest.mark.parametrize("options, allowed", [
    (["--nnodes", "1:2"], "elastic node ranges are not supported"),
    (["--nproc-per-node", "many"], "'many' is not a whole number"),
    (["-np", "0"], "0: give at least 1"),
    (["--max-restarts", "-1"], "-1: give 0 or more"),
    (["--rdzv-endpoint", "node0"], "give HOST:PORT"),
    (["--tee", "7"], "give 0 (none), 1 (stdout), 2 (stderr), 3 (both)"),
    (["--local-ranks-filter", "first"], "give local ranks separated by commas"),
    (["-H", "a:0"], "a has 0 slots; give at least 1"),
    (["--hostfile", "/nonexistent/hosts"], "--hostfile: [Errno 2] No such file"),
    (["--standalone", "--nnodes", "2"], "--standalone is one node on this machine"),
    (["-H", "localhost:2", "--backend", "zmq"], "they need --backend mpi"),
    (["--nnodes", "2", "--node-rank", "2", "--master-port", "1"], "node ranks are 0 to 1"),
])
def test_bad_values_are_refused_saying_what_is_allowed(options, allowed):
    result = distdl_run(*options, WORKERS / "launch_env.py", "env", timeout=30)
    assert result.returncode == 2 and allowed in result.stderr, result.stderr


def test_a_missing_script_is_refused_before_any_worker_starts(tmp_path):
    start = time.monotonic()
    result = distdl_run("-n", 2, tmp_path / "trian.py", timeout=30)
    assert result.returncode == 2 and f"no such script: {tmp_path / 'trian.py'}" in result.stderr
    assert "no worker was started" in result.stderr and time.monotonic() - start < 20


def test_what_follows_the_script_is_the_scripts_even_where_it_looks_like_distdl_runs(tmp_path):
    script = tmp_path / "echo_args.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\n")
    result = distdl_run("-n", 1, "--timeout=30", script, "--log", "x", "--timeout", "5", "-n", "9", "--", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "args ['--log', 'x', '--timeout', '5', '-n', '9', '--']" in result.stdout, result.stdout
    refused = distdl_run("--max-rest", 1, script, timeout=30)  # no abbreviations: they would take the script's names
    assert refused.returncode == 2 and "unrecognized arguments: --max-rest" in refused.stderr


def test_version():
    result = distdl_run("--version", timeout=30)
    assert result.returncode == 0 and re.fullmatch(r"distdl-run \d+\.\d+\S*\n", result.stdout), result.stdout


def test_local_ranks_filter_shows_only_those_ranks_and_logs_all(tmp_path):
    result = distdl_run("-n", 2, "--backend", "zmq", "--local-ranks-filter", 1, "--tee", 3, "--log-dir", tmp_path,
                        WORKERS / "launch_env.py", "env")
    assert result.returncode == 0, result.stderr
    assert sorted(ranks_told(result.stdout)) == [1], result.stdout
    assert sorted(ranks_told((tmp_path / "rank-0.log").read_text() + (tmp_path / "rank-1.log").read_text())) == [0, 1]


BOTH_STREAMS = "import os, sys\nimport distdl\nrank = os.environ['RANK']\nprint('out', rank)\n" \
               "print('err', rank, file=sys.stderr)\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_tee_keeps_the_chosen_streams_of_each_local_rank_in_its_log_and_shows_all_on_the_console(backend, tmp_path):
    script = tmp_path / "both_streams.py"
    script.write_text(BOTH_STREAMS)
    result = distdl_run("-n", 3, "--backend", backend, "--tee", "0:1,1:2", "--log-dir", tmp_path / "logs", script)
    assert result.returncode == 0, result.stderr
    shown = sorted(line for line in result.stdout.splitlines() if line.startswith("[rank"))
    assert shown == [f"[rank {r}] {stream} {r}" for r in range(3) for stream in ("err", "out")], result.stdout
    assert (tmp_path / "logs" / "rank-0.log").read_text() == "out 0\n"  # stdout only
    assert (tmp_path / "logs" / "rank-1.log").read_text() == "err 1\n"  # stderr only
    assert not (tmp_path / "logs" / "rank-2.log").exists()  # not named: no log, as torchrun's


def test_tee_without_a_log_dir_writes_both_streams_to_a_new_directory_it_names(tmp_path):
    script = tmp_path / "both_streams.py"
    script.write_text(BOTH_STREAMS)
    result = distdl_run("-n", 2, "--backend", "zmq", "-t", 3, script)
    assert result.returncode == 0, result.stderr
    where = re.search(r"--tee: the workers' log files are in (\S+) \(give --log-dir to choose\)", result.stderr)
    assert where, result.stderr
    logs = {name: open(os.path.join(where[1], name)).read() for name in sorted(os.listdir(where[1]))}
    shutil.rmtree(where[1])
    assert {name: sorted(text.splitlines()) for name, text in logs.items()} == \
        {f"rank-{r}.log": [f"err {r}", f"out {r}"] for r in (0, 1)}
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("[rank")) == \
        [f"[rank {r}] {stream} {r}" for r in (0, 1) for stream in ("err", "out")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_restarts_without_a_checkpoint_directory_say_so_and_give_up_with_one_traceback(backend):
    result = distdl_run("-n", 2, "--backend", backend, "--max-restarts", 1, "--timeout", 20,
                        WORKERS / "launched.py", "raise")
    assert result.returncode == 1
    assert "restarting the job (1 of 1 restarts) after rank 1 failed with exit code 1, from the start: no " \
           "checkpoint directory" in result.stderr, result.stderr
    assert "giving up after 1 restart: rank 1 failed with exit code 1" in result.stderr
    everything = result.stdout + result.stderr
    assert result.stdout.count("[rank 1] Traceback (most recent call last)") == 2, everything  # one per attempt
    assert "Traceback" not in result.stderr and result.stderr.count("its traceback is above, in its output") == 2
    assert "stopped rank 0 because of it" in result.stderr
    assert "BAD TERMINATION" not in everything and "problem with your application" not in everything


def pty_run(args, timeout):
    """distdl-run with its stdout on a pseudo-terminal, as in a user's shell: what the terminal received."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], stdout=slave,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(slave)
    received, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], max(deadline - time.monotonic(), 0))[0]:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            received += chunk
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    assert not session_left(process.pid)
    return process.returncode, received.decode(errors="replace"), process.stderr.read().decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_0s_progress_bar_is_live_on_a_terminal(backend):
    code, screen, err = pty_run(["-n", 2, "--backend", backend, WORKERS / "launch_env.py", "progress"], timeout=90)
    assert code == 0, err
    redraws = re.findall(r"\r\x1b\[Krank0-bar: +(\d+)%", screen)  # in place, untagged
    assert len(redraws) >= 4 and redraws == sorted(redraws, key=int) and redraws[-1] == "100", screen
    assert "[rank 0] rank0-bar" not in screen
    assert re.search(r"\[rank 1\] rank1-bar: 100%", screen)  # the other ranks' bars: their last state, tagged
    assert "\r\x1b[Krank1-bar" not in screen
    assert "[rank 0] rank 0 done" in screen and "[rank 1] rank 1 done" in screen


def test_the_trainers_bar_is_live_on_a_terminal():
    code, screen, err = pty_run(["-n", 2, "--backend", "zmq", WORKERS / "launch_env.py", "trainer"], timeout=90)
    assert code == 0, err
    assert re.search(r"\r\x1b\[Kepoch 1/2: +\d+%", screen) and re.search(r"\r\x1b\[Kepoch 2/2: +\d+%", screen), screen
    assert re.search(r"\r\x1b\[Kepoch 2/2  loss [\d.]+ .*\r\n", screen)  # the epoch's line, where its bar was


def test_without_a_terminal_the_workers_are_not_told_to_draw():
    result = distdl_run("-n", 2, "--backend", "zmq", WORKERS / "launch_env.py", "progress")
    assert result.returncode == 0, result.stderr
    assert "bar" not in result.stdout + result.stderr


# dl.init() under other launchers: the thread limit, and never a silent world of one

THREAD_NAMES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
LAUNCHERS = ("DISTDL_", "PMI_", "PMIX_", "OMPI_", "SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT")


def plain_env(**extra):
    """This environment without any launcher's variables or thread settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHERS) and k not in THREAD_NAMES}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_workers(commands, env_for, timeout=60):
    """Start one process per command (own sessions), collect (code, output) each; all killed at ``timeout``."""
    processes = [subprocess.Popen(command, env=env_for(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True) for i, command in enumerate(commands)]
    results, deadline = [], time.monotonic() + timeout
    for p in processes:
        try:
            output = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0]
            results.append((p.returncode, output))
        except subprocess.TimeoutExpired:
            for q in processes:
                os.killpg(q.pid, 9)
            pytest.fail(f"the workers ran past {timeout} s")
    for p in processes:
        assert not session_left(p.pid)
    return results


def default_threads(env):
    """The BLAS threads a plain Python gets in ``env``: the reference for what the user chose."""
    code = "import numpy; from threadpoolctl import threadpool_info; print(threadpool_info()[0]['num_threads'])"
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60).stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: every limit is one thread")
def test_plain_mpiexec_limits_blas_threads_to_the_cores_per_rank_unless_the_user_chose():
    from multiproc import mpiexec

    command = [mpiexec(), "-n", "2", sys.executable, str(WORKERS / "launch_env.py"), "env"]
    [(code, output)] = run_workers([command], lambda i: plain_env())
    assert code == 0, output
    told = ranks_told(output)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert sorted(told) == [0, 1] and {seen["threads"] for seen in told.values()} == {str(share)}, output
    assert output.count(f"BLAS and OpenMP limited to {share} thread") == 2, output  # once per rank, at info level
    chosen = plain_env(OMP_NUM_THREADS=2)
    [(code, output)] = run_workers([command], lambda i: chosen)
    assert code == 0, output
    assert {seen["threads"] for seen in ranks_told(output).values()} == {str(default_threads(chosen))}
    assert "limited to" not in output


def slurm_env(rank, job, **extra):
    """What srun sets for task ``rank`` of a 2-task step on this machine (no PMI: srun --mpi=none)."""
    return plain_env(SLURM_JOB_ID=job, SLURM_STEP_ID=0, SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_NTASKS=2,
                     SLURM_STEP_NUM_TASKS=2, SLURM_JOB_NODELIST="localhost", SLURM_STEP_NODELIST="localhost",
                     SLURM_NODEID=0, DISTDL_TIMEOUT=20, **extra)


def free_slurm_job():
    """A job id whose derived rendezvous port is free here now."""
    for job in range(os.getpid() % 10000 + 1000, os.getpid() % 10000 + 1100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", launchers.slurm_port(job, 0)))
                return job
            except OSError:
                continue
    pytest.skip("no free port for a faked Slurm job")


@pytest.mark.parametrize("nodes, first", [("node[07-09,12],gpu3", "node07"), ("a,b", "a"), ("gpu3", "gpu3"),
                                          ("rack1-n[3-4]", "rack1-n3")])
def test_the_first_host_of_a_slurm_node_list(nodes, first):
    assert launchers.first_host(nodes) == first


def test_srun_without_pmi_joins_by_the_zeromq_rendezvous_with_the_jobs_secret():
    job = free_slurm_job()
    command = [sys.executable, str(WORKERS / "launch_env.py"), "env"]
    results = run_workers([command, command],
                          lambda rank: slurm_env(rank, job, DISTDL_JOB_SECRET="the job's secret, in its environment"))
    assert [code for code, _ in results] == [0, 0], results
    told = ranks_told(results[0][1] + results[1][1])
    assert sorted(told) == [0, 1] and {(s["size"], s["sum"], s["backend"]) for s in told.values()} == \
        {("2", "2", "zmq")}


def test_srun_without_pmi_or_a_secret_is_an_error_saying_what_to_do():
    command = [sys.executable, str(WORKERS / "launch_env.py"), "env"]
    [(code, output)] = run_workers([command], lambda rank: slurm_env(1, 4242))
    assert code != 0 and "srun started this process as one of 2 without PMI" in output, output
    assert "export DISTDL_JOB_SECRET" in output


def test_srun_with_pmi_is_an_mpi_launch():
    from multiproc import mpiexec

    command = [mpiexec(), "-n", "2", sys.executable, str(WORKERS / "launch_env.py"), "env"]  # Hydra gives the PMI
    [(code, output)] = run_workers([command], lambda i: slurm_env(0, 4242))
    assert code == 0, output
    told = ranks_told(output)
    assert sorted(told) == [0, 1] and {(s["size"], s["backend"]) for s in told.values()} == {("2", "mpi")}


@pytest.mark.parametrize("launcher, variables, said", [
    ("torchrun", {"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500},
     "torchrun started this process as rank 1 of 2"),
    ("Open MPI", {"OMPI_COMM_WORLD_RANK": 0, "OMPI_COMM_WORLD_SIZE": 2},
     "Open MPI's mpirun announced 2 processes (OMPI_COMM_WORLD_SIZE=2) but the MPI backend formed a world of 1"),
    ("PMI", {"PMI_RANK": 0, "PMI_SIZE": 2}, "(PMI_SIZE=2) but the MPI backend formed a world of 1"),
])
def test_a_launchers_world_of_several_is_never_a_silent_world_of_one(launcher, variables, said):
    command = [sys.executable, str(WORKERS / "launch_env.py"), "env"]
    [(code, output)] = run_workers([command], lambda i: plain_env(**variables), timeout=60)
    assert code != 0 and said in output, output
    assert "rank 0 of 1" not in output
