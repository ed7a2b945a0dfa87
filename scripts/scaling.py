"""Scaling experiments: a model at a list of worker counts, measured here, and predicted beyond this machine.

    python scripts/scaling.py --model mlp --workers 1,2 --mode weak --batch 128 --backend mpi \\
        --out scaling-mlp.json [--plot scaling-mlp.png] [--predict 8,16,...,1024 --bandwidth 10e9 --latency 5e-6]

- weak scaling keeps the per-worker batch (--batch), strong scaling the global batch;
- each worker count runs as its own job (distdl-run), one BLAS thread per worker;
- the table gives workers, global batch, samples/s, speed-up, efficiency and the share
  of the step spent in exposed communication (what backward waited for at its end);
- an alpha-beta model of the ring allreduce, t = 2(p-1) alpha + 2 (p-1)/p n beta, is
  fitted to allreduces of several sizes measured in the largest job, set beside the
  exposed communication measured in each job, and used with the compute time per step
  of the largest job (its step less its exposed communication) to predict
  the efficiency at --predict workers over a network of the given --bandwidth
  (bytes/s) and --latency (s), assuming no overlap of communication with compute;
- a JSON record and, when matplotlib is installed, a PNG plot of speed-up and
  efficiency against the ideal.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lstm", "ae"])
    parser.add_argument("--workers", default="1,2", help="worker counts to run here")
    parser.add_argument("--mode", default="weak", choices=["weak", "strong"])
    parser.add_argument("--batch", type=int, default=128, help="per-worker batch (weak) or global batch (strong)")
    parser.add_argument("--backend", default="auto", choices=["auto", "mpi", "zmq"])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per worker count")
    parser.add_argument("--predict", default="8,16,32,64,128,256,512,1024")
    parser.add_argument("--bandwidth", type=float, default=10e9, help="network bandwidth in bytes/s (default 80 Gb/s)")
    parser.add_argument("--latency", type=float, default=5e-6, help="network latency in seconds per message")
    parser.add_argument("--out", default="scaling.json")
    parser.add_argument("--plot", help="a PNG of speed-up and efficiency (needs matplotlib)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def worker(args):
    """One job: time training steps at this world size; in a multi-worker job also time allreduces by size."""
    sys.path.insert(0, str(HERE))
    import numpy as np

    import distdl as dl
    from workloads import agreed_steps, make_step, timed, workload

    comm = dl.init()
    batch = args.batch if args.mode == "weak" else max(1, args.batch // comm.size)
    title, build, x, y, loss_name, (opt_name, lr) = workload(args.model, np.random.default_rng(comm.rank))
    x, y = np.resize(x, (batch,) + x.shape[1:]).astype(np.float32), np.resize(y, (batch,) + y.shape[1:])
    dl.seed(0)
    model = build(dl.nn)
    network = dl.DistributedDataParallel(model) if comm.size > 1 else model
    step = make_step(network, getattr(dl.optim, opt_name)(network.parameters(), lr=lr), getattr(dl.nn, loss_name)(),
                     dl.tensor(x), y if y.dtype.kind == "i" else dl.tensor(y))
    steps = agreed_steps(step, comm, args.seconds)
    comm.barrier()
    times, waits = timed(step, steps, (lambda: network.last_sync_wait) if comm.size > 1 else None)
    model_bytes = sum(p.data.nbytes for p in model.parameters())
    record = {"workers": comm.size, "batch_per_worker": batch, "title": title, "model_bytes": model_bytes,
              "step": statistics.median(times), "exposed": statistics.median(waits) if waits else 0.0}
    if comm.size > 1:
        record["allreduce"] = []
        nbytes = 4096
        while nbytes <= 2 * model_bytes:
            array = np.zeros(nbytes // 4, np.float32)
            record["allreduce"].append([nbytes, statistics.median(
                timed(lambda: comm.allreduce(array, "mean", check=False), 30)[0])])
            nbytes *= 4
    everyone = comm.allgather_json(record)
    if comm.rank == 0:
        slowest = max(everyone, key=lambda r: r["step"])
        print("RESULT " + json.dumps({**record, "step": slowest["step"], "exposed": slowest["exposed"]}), flush=True)
    dl.shutdown()


def run_job(args, workers):
    command = [sys.executable, "-m", "launcher", "-n", str(workers), "--no-tag-output"]
    if workers > 1:
        command += ["--backend", args.backend]
    command += [__file__, "--worker", "--model", args.model, "--mode", args.mode, "--batch", str(args.batch),
                "--seconds", str(args.seconds)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one BLAS thread per worker
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"the {workers}-worker job failed:\n{result.stdout}\n{result.stderr}")
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def fit_alpha_beta(points, p):
    """alpha (s per message step) and beta (s per byte) of t = 2(p-1) alpha + 2 (p-1)/p n beta, least squares."""
    xs = [n for n, _ in points]
    ts = [t for _, t in points]
    mean_x, mean_t = sum(xs) / len(xs), sum(ts) / len(ts)
    slope = sum((x - mean_x) * (t - mean_t) for x, t in zip(xs, ts)) / sum((x - mean_x) ** 2 for x in xs)
    intercept = max(mean_t - slope * mean_x, 0.0)
    return intercept / (2 * (p - 1)), slope / (2 * (p - 1) / p)


def ring_time(nbytes, p, alpha, beta):
    return 0.0 if p == 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    counts = [int(n) for n in args.workers.split(",")]
    records = [run_job(args, n) for n in counts]
    base = records[0]
    rows = []
    for r in records:
        global_batch = r["batch_per_worker"] * r["workers"]
        rate = global_batch / r["step"]
        speedup = rate / (base["batch_per_worker"] * base["workers"] / base["step"]) * base["workers"]
        rows.append({"workers": r["workers"], "global_batch": global_batch, "samples_per_s": rate,
                     "speedup": speedup, "efficiency": speedup / r["workers"],
                     "exposed_share": r["exposed"] / r["step"], "step_ms": 1e3 * r["step"]})
    title = base["title"].rsplit(" b", 1)[0]  # the workload's own batch is not the one used here
    print(f"{args.mode} scaling of {title}, {args.backend} backend, batch {args.batch} "
          f"{'per worker' if args.mode == 'weak' else 'global'}")
    print("| workers | global batch | step ms | samples/s | speed-up | efficiency | exposed communication |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['global_batch']} | {row['step_ms']:.2f} | {row['samples_per_s']:,.0f} | "
              f"{row['speedup']:.2f} | {row['efficiency']:.2f} | {row['exposed_share']:.0%} |")

    record = {"args": vars(args), "title": title, "measured": rows, "jobs": records}
    biggest = records[-1]
    if "allreduce" in biggest:
        p = biggest["workers"]
        alpha, beta = fit_alpha_beta(biggest["allreduce"], p)
        print(f"\nalpha-beta fit on {p} local workers: alpha {1e6 * alpha:.2f} us, beta {1 / beta / 1e9:.2f} GB/s")
        print("| workers | step ms | compute ms (step - exposed) | exposed communication ms | model: allreduce ms |")
        print("|---|---|---|---|---|")
        checks = []
        for r in records[1:]:
            modelled = ring_time(r["model_bytes"], r["workers"], alpha, beta)
            checks.append({"workers": r["workers"], "step": r["step"], "exposed": r["exposed"], "model": modelled})
            print(f"| {r['workers']} | {1e3 * r['step']:.2f} | {1e3 * (r['step'] - r['exposed']):.2f} | "
                  f"{1e3 * r['exposed']:.3f} | {1e3 * modelled:.3f} |")
        # the compute time per step of the largest job: it includes DDP's own work and the sharing of the machine
        compute_here = biggest["step"] - biggest["exposed"]
        predictions = []
        print(f"\npredicted on a network of {args.bandwidth / 1e9:g} GB/s and {1e6 * args.latency:g} us latency "
              "(no overlap):")
        print("| workers | compute ms | allreduce ms | efficiency |")
        print("|---|---|---|---|")
        for p_ in (int(n) for n in args.predict.split(",") if n):
            compute = compute_here if args.mode == "weak" else compute_here * biggest["workers"] / p_
            comm_time = ring_time(base["model_bytes"], p_, args.latency, 1 / args.bandwidth)
            efficiency = base["step"] / (compute + comm_time) if args.mode == "weak" else \
                base["step"] / (p_ * (compute + comm_time))
            predictions.append({"workers": p_, "compute": compute, "allreduce": comm_time, "efficiency": efficiency})
            print(f"| {p_} | {1e3 * compute:.2f} | {1e3 * comm_time:.3f} | {efficiency:.2f} |")
        record.update({"alpha": alpha, "beta": beta, "model_check": checks, "predicted": predictions})
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    if args.plot:
        plot(record, args.plot)
    print(f"\nwrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def plot(record, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = record["measured"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    workers = [m["workers"] for m in measured]
    left.plot(workers, [m["speedup"] for m in measured], "o-", label="measured")
    left.plot(workers, workers, "k--", label="ideal")
    left.set(xlabel="workers", ylabel="speed-up", title=record["title"])
    right.plot(workers, [m["efficiency"] for m in measured], "o-", label="measured")
    if record.get("predicted"):
        right.plot([p["workers"] for p in record["predicted"]], [p["efficiency"] for p in record["predicted"]],
                   "s:", label="predicted (alpha-beta)")
        right.set_xscale("log", base=2)
    right.axhline(1.0, color="k", linestyle="--", label="ideal")
    right.set(xlabel="workers", ylabel="efficiency", ylim=(0, 1.1))
    for axis in (left, right):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
