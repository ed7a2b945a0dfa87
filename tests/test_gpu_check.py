"""scripts/gpu_check.py --simulate: every GPU check's code runs on the CPU against the simulated device and passes.

The GPU run itself needs a lent GPU; this keeps the script, its steps and its report working until then.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import distdl as dl

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
STEPS = ["environment", "device_layer", "pinned_memory", "ops_gradcheck", "ops_vs_numpy", "rng_same_draws",
         "train_steps",
         "checkpoint_to_cpu", "dataloader_device", "trainer_device", "ddp_two_ranks", "nccl_one_rank", "bench_vs_torch"]
GPU_ONLY = {"pinned_memory", "nccl_one_rank", "bench_vs_torch"}


def run_check(tmp_path, *args, timeout=180):
    """The script as a user runs it; its steps' scratch folders under tmp_path, so leftovers can be found."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                         cwd=tmp_path, env=env)
    return out, out.stdout.strip().splitlines()


def processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def test_simulated_run_passes_every_step_and_reports_it(tmp_path):
    out, lines = run_check(tmp_path, "--simulate")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())  # the default: the current directory
    names = [step["name"] for step in report["steps"]]
    assert report["mode"] == "simulate" and names == STEPS
    for step in report["steps"]:
        wanted = "skipped" if step["name"] in GPU_ONLY else "passed"
        assert step["status"] == wanted, step
        assert any(line.startswith(step["name"]) and wanted in line for line in lines), (step["name"], out.stdout)
    assert sorted(report["skipped"]) == sorted(GPU_ONLY)
    assert lines[-1].startswith(f"{len(STEPS) - len(GPU_ONLY)} passed, 0 failed, {len(GPU_ONLY)} skipped (simulate)")
    assert not processes_mentioning(str(tmp_path))


def test_a_spent_budget_fails_the_steps_not_run_and_the_exit_status(tmp_path):
    report = tmp_path / "sub" / "r.json"
    out, lines = run_check(tmp_path, "--simulate", "--only", "environment,ops_gradcheck", "--budget", "0",
                           "--report", str(report))
    assert out.returncode == 1, out.stdout + out.stderr
    steps = json.loads(report.read_text())["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("environment", "failed"), ("ops_gradcheck", "failed")]
    assert "budget is spent" in steps[0]["detail"] and lines[-1].startswith("0 passed, 2 failed")


def test_an_unknown_step_is_named_with_the_valid_ones(tmp_path):
    out, _ = run_check(tmp_path, "--simulate", "--only", "environment,opz")
    assert out.returncode == 2 and "unknown step(s) opz" in out.stderr and "ops_gradcheck" in out.stderr


def test_a_step_past_its_timeout_is_killed_with_what_it_started(tmp_path):
    """0.3 s: the 2-rank job (a launcher, mpiexec or a rendezvous, two workers) takes 0.6 s and more even idle
    (0.6 s was once just enough to finish)."""
    out, lines = run_check(tmp_path, "--simulate", "--only", "ddp_two_ranks", "--timeout", "0.3")
    assert out.returncode == 1, out.stdout + out.stderr
    (step,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert step["status"] == "failed" and step["detail"] == "timed out after 0.3 s", step
    deadline = time.monotonic() + 20  # the launcher's own grace for its workers, on a loaded machine
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path))  # the launcher and its two workers went with the step


@pytest.mark.skipif(dl.gpu_available(), reason="a GPU is here: the run would check it")
def test_without_a_gpu_the_run_says_what_is_missing_and_points_to_simulate(tmp_path):
    out, _ = run_check(tmp_path)
    assert out.returncode == 2 and "--simulate" in out.stderr, out.stdout + out.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["steps"] == [] and ("CuPy is not installed" in report["error"] or "sees no CUDA GPU" in report["error"])
