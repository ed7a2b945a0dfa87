"""Every GPU check, in order, each step in its own process under its own timeout: the first run on a lent GPU.

    python scripts/gpu_check.py [--simulate] [--report FILE] [--only STEP,STEP] [--budget SECONDS] [--timeout SECONDS]

Prints one line per step (name, passed/failed/skipped, seconds, detail), then ``N passed, M failed``;
exits 0 only when every step passed (2, before any step, where there is no GPU to check). Writes a JSON report (--report; by default gpu_check.json in $OUT
when it is set, else in the current directory) with each step's detail, figures and, on failure, the
end of its output. The whole run stays within --budget (400 s: the 7 minutes of one H200 lease, less
the start); a step that would start past it fails as not run, and ``--only`` reruns the ones named.

``--simulate`` runs the same steps on the CPU against the simulated asynchronous device ("sim", where a
missing event wait reads stale data) and must pass in CI. There the engine computes on NumPy, so the
op steps compare NumPy with itself (they still run the whole checking code); the steps that need a real
GPU report "skipped (simulate)" and count neither way: pinned_memory, nccl_one_rank, bench_vs_torch.

The steps are in scripts/gpu_steps.py. Needs numpy, distdl's dependencies and, on a GPU, CuPy (PyTorch for
the benchmark); never pytest.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gpu_steps import STEPS, child_env, first_line, load_on_host  # first: it puts this checkout's distdl on sys.path

from distdl import backend  # noqa: E402


def run_step(name, simulate, result_file):
    """In the step's own process: run it, write {"detail", "data"} to ``result_file``; a failure exits 1."""
    fn = {step[0]: step[1] for step in STEPS}[name]
    try:
        detail, data = fn(simulate)
    except Exception as exc:
        traceback.print_exc()
        Path(result_file).write_text(json.dumps({"detail": first_line(exc), "data": getattr(exc, "data", {})}))
        sys.exit(1)
    Path(result_file).write_text(json.dumps({"detail": detail, "data": data}))


TERM_GRACE = 10  # seconds between SIGTERM and SIGKILL for a step past its timeout


def spawn(name, simulate, timeout, workdir):
    """One step in its own process group: (status, detail, data, output tail).

    Past its timeout the group gets SIGTERM, so that a launcher it started stops its workers its own way
    (some in sessions of their own), then SIGKILL after a grace; what is left of the group goes at the end.
    """
    result = Path(workdir) / f"{name}.json"
    command = [sys.executable, __file__, "--step", name, "--result", str(result)] + (["--simulate"] if simulate else [])
    with open(Path(workdir) / f"{name}.log", "w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(simulate),
                                cwd=workdir, start_new_session=True)
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(TERM_GRACE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also what the step started (workers, a launcher)
        proc.wait()
        log.seek(0)
        tail = log.read()[-4000:]
    answer = json.loads(result.read_text()) if result.exists() else {}
    if timed_out:
        return "failed", f"timed out after {timeout:.3g} s", answer.get("data", {}), tail
    if proc.returncode == 0 and answer:
        return "passed", answer["detail"], answer["data"], ""
    detail = answer.get("detail") or f"exit status {proc.returncode}: {tail.strip().splitlines()[-1:] or ''}"
    return "failed", detail, answer.get("data", {}), tail


def why_no_gpu():
    """None where CuPy sees a CUDA GPU, else what is missing (CuPy, or the driver or device, with CUDA's words)."""
    try:
        cp = backend.cupy()
    except RuntimeError as exc:  # CuPy is not installed: the message says what to install
        return str(exc)
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy's CUDARuntimeError: no driver, or one too old
        return f"CuPy {cp.__version__} sees no CUDA GPU: {first_line(exc)}"
    return None if count else f"CuPy {cp.__version__} sees no CUDA GPU (0 devices)"


def write_report(path, mode, rows, seconds):
    report = {"mode": mode, "host": platform.node(), "seconds": round(seconds, 1),
              "passed": sum(r["status"] == "passed" for r in rows), "failed": sum(r["status"] == "failed" for r in rows),
              "skipped": [r["name"] for r in rows if r["status"] == "skipped"], "steps": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
    return report


def default_report():
    return str(Path(os.environ.get("OUT") or ".") / "gpu_check.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", action="store_true", help="run on the CPU against the simulated device")
    parser.add_argument("--report", default=default_report(), help="the JSON report (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated steps to run (default: all)")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for the whole run")
    parser.add_argument("--timeout", type=float, help="at most this many seconds per step (default: each its own)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # in a step's own process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--load-on-host", help=argparse.SUPPRESS)  # checkpoint_to_cpu's process without a GPU
    args = parser.parse_args()
    if args.step:
        return run_step(args.step, args.simulate, args.result)
    if args.load_on_host:
        return load_on_host(args.load_on_host)

    names = [step[0] for step in STEPS]
    wanted = args.only.split(",") if args.only else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}: the steps are {', '.join(names)}")
    missing = None if args.simulate else why_no_gpu()
    if missing:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps({"mode": "gpu", "error": missing, "steps": []}, indent=2))
        print(f"gpu_check: {missing}; --simulate checks the same code on the CPU against the simulated device",
              file=sys.stderr)
        sys.exit(2)
    start, rows = time.monotonic(), []
    mode = "simulate" if args.simulate else "gpu"
    report = write_report(args.report, mode, rows, 0)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as workdir:
        for name, _, timeout, gpu_only in STEPS:
            if name not in wanted:
                continue
            began, left = time.monotonic(), args.budget - (time.monotonic() - start)
            if args.simulate and gpu_only:
                status, detail, data, tail = "skipped", "skipped (simulate): needs a real GPU", {}, ""
            elif left < 5:
                status, detail, data, tail = "failed", f"not run: the {args.budget:.0f} s budget is spent", {}, ""
            else:
                status, detail, data, tail = spawn(name, args.simulate, min(timeout, left, args.timeout or left), workdir)
            seconds = time.monotonic() - began
            rows.append({"name": name, "status": status, "seconds": round(seconds, 2), "detail": detail, "data": data,
                         "output_tail": tail})
            print(f"{name:<18} {status:<7} {seconds:7.1f} s  {detail}", flush=True)
            if data.get("table"):
                print(data["table"], flush=True)
            report = write_report(args.report, mode, rows, time.monotonic() - start)  # a cut run leaves its findings
    skipped = report["skipped"]
    print(f"{report['passed']} passed, {report['failed']} failed" + (f", {len(skipped)} skipped (simulate)" if skipped else "")
          + f" in {report['seconds']:.0f} s; report: {args.report}")
    sys.exit(1 if report["failed"] or not report["passed"] else 0)


if __name__ == "__main__":
    main()
