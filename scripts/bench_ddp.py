"""Data-parallel weak scaling: 1 worker against N workers with the same per-worker batch.

    python scripts/bench_ddp.py [-n 2] [--models mlp,cnn] [--buckets 0.25,1,25] [--seconds 2] [--device cuda]

For the MLP and the CNN of bench_engine.py (built by scripts/workloads.py), one BLAS
thread per worker, N workers under mpiexec (distdl's MPI backend):
- samples per second and scaling efficiency = throughput(N) / (N x throughput(1)),
  the 1-worker figure being the plain model alone on the machine (every step time here
  is the 20th percentile of the steps timed; a wait, the median);
- the step split into compute, exposed communication (what backward waited for its
  allreduces at its end) and hidden communication, against the time the same
  allreduces take alone, for each bucket size;
- the same N processes training without any communication: the ceiling of this machine;
- DDP's fixed cost per step: DDP in a world of one against the plain model, interleaved;
  and with N workers (on the CPU), in interleaved rounds: the plain model training with no
  communication, the plain model with one raw mpi4py Allreduce of all its gradients after
  backward (copied into one flat buffer, divided by N, and back: the least any
  data-parallel step does), and DDP, against the bound no-communication step + that
  allreduce alone + 0.05 ms; their efficiencies against the plain model on one worker, timed
  in the same rounds (rank 0 alone, the others asleep), so a noisy spell on the machine
  weighs on both sides of the ratio;
- PyTorch DistributedDataParallel over gloo on the same model, worker count and
  batch, in the same job (when torch is installed; never a dependency).

With --device cuda every worker trains on GPU local_rank % GPUs (several share one when there are
fewer GPUs than workers, as distdl's staging path allows), each timed step ending in a device
synchronisation; PyTorch runs on the same GPU, over NCCL when every worker has its own GPU, else over
gloo (NCCL refuses two ranks on one GPU).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2, help="workers")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--buckets", default="0.25,1,25", help="bucket sizes in MB (25: the whole model here)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the workers train")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = parse_args()
STEP_PERCENTILE = 20  # a step's time: a passing load on the machine only ever adds time, so not the median
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(HERE.parent))
import distdl as dl  # noqa: E402
from distdl import backend, device  # noqa: E402
from workloads import agreed_steps, free_port, gpu_peer, make_step, require_gpu, synced, timed, workload  # noqa: E402

try:
    import torch
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel as TorchDDP
except ImportError:
    torch = None
if ARGS.device == "cuda":
    require_gpu()
    torch = gpu_peer(torch)


def where():
    """The device dl.init() bound this worker to (GPU local_rank % GPUs), by a name both frameworks understand."""
    return repr(device.current())


def distdl_sync():
    backend.cupy().cuda.Device().synchronize()  # every stream: DDP's communication stream too


def distdl_step(key, comm, bucket_mb):
    """(title, a training step of the model, the DDP wrapping it or None when ``bucket_mb`` is 0)."""
    title, build, x, y, loss_name, (opt_name, lr) = workload(key, np.random.default_rng(comm.rank))
    dl.seed(0)
    model = build(dl.nn).to(where())
    ddp = dl.DistributedDataParallel(model, bucket_cap_mb=bucket_mb) if bucket_mb else model
    target = backend.as_array(y, device=where())
    step = synced(make_step(ddp, getattr(dl.optim, opt_name)(ddp.parameters(), lr=lr), getattr(dl.nn, loss_name)(),
                            dl.tensor(x.astype(np.float32), device=where()),
                            target if y.dtype.kind == "i" else dl.tensor(target)), distdl_sync, ARGS.device)
    return title, step, ddp if bucket_mb else None


def distdl_figures(key, comm, bucket_mb):
    title, step, ddp = distdl_step(key, comm, bucket_mb)
    steps = agreed_steps(step, comm, ARGS.seconds)
    comm.barrier()
    times, waits = timed(step, steps, (lambda: ddp.last_sync_wait) if bucket_mb else None)
    figures = {"title": title, "step": float(np.percentile(times, STEP_PERCENTILE)), "steps": steps}
    if bucket_mb:
        figures["exposed"] = statistics.median(waits)
        figures["buckets"] = len(ddp.buckets)
        comm.barrier()

        def allreduce_alone():
            for bucket in ddp.buckets:
                comm.allreduce(bucket.flat, "mean", check=False)
            if ARGS.device == "cuda":
                distdl_sync()

        figures["comm"] = statistics.median(timed(allreduce_alone, 50)[0])
    return figures


def torch_step(key, comm, distributed):
    title, build, x, y, loss_name, (opt_name, lr) = workload(key, np.random.default_rng(comm.rank))
    torch.manual_seed(0)
    model = build(torch.nn).to(where())
    if distributed:
        model = TorchDDP(model, device_ids=[device.current().index] if ARGS.device == "cuda" else None)
    return title, synced(make_step(model, getattr(torch.optim, opt_name)(model.parameters(), lr=lr),
                                   getattr(torch.nn, loss_name)(), torch.from_numpy(x.astype(np.float32)).to(where()),
                                   torch.from_numpy(y).to(where())),
                         torch.cuda.synchronize if ARGS.device == "cuda" else None, ARGS.device)


def torch_figures(key, comm, distributed):
    title, step = torch_step(key, comm, distributed)
    steps = agreed_steps(step, comm, ARGS.seconds)
    comm.barrier()
    return {"title": title, "step": float(np.percentile(timed(step, steps)[0], STEP_PERCENTILE)), "steps": steps}


def ddp_alone_figures(key, comm, rounds=6):
    """DDP in a world of one against the same model unwrapped (torch's likewise): the fixed cost DDP adds to each
    step. A few percent of a step: so the two take turns over ``rounds`` rounds, and each gives the 20th
    percentile of its steps (a passing load only ever adds time)."""
    title, plain, _ = distdl_step(key, comm, 0)
    steps = {"plain": plain, "ddp": distdl_step(key, comm, 25)[1]}
    if torch is not None:
        steps.update(torch_plain=torch_step(key, comm, False)[1], torch_ddp=torch_step(key, comm, True)[1])
    count = agreed_steps(plain, comm, ARGS.seconds / rounds)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += timed(step, count)[0]
    return {"model": key, "title": title, "framework": "alone",
            **{name: float(np.percentile(t, STEP_PERCENTILE)) for name, t in times.items()}}


def mpi4py_step(key, comm):
    """The plain model whose gradients are averaged by one raw mpi4py Allreduce after backward: the reference
    for what DDP adds beyond the communication itself (and that allreduce alone, timed on its own)."""
    from mpi4py import MPI

    title, build, x, y, loss_name, (opt_name, lr) = workload(key, np.random.default_rng(comm.rank))
    dl.seed(0)
    model = build(dl.nn)
    params = list(model.parameters())
    optimizer, loss_fn = getattr(dl.optim, opt_name)(params, lr=lr), getattr(dl.nn, loss_name)()
    inputs = dl.tensor(x.astype(np.float32))
    flat = np.zeros(sum(p.data.size for p in params), np.float32)
    views = np.split(flat, np.cumsum([p.data.size for p in params])[:-1])
    scale = np.float32(1 / comm.size)

    def step():
        optimizer.zero_grad()
        loss_fn(model(inputs), y).backward()
        for p, view in zip(params, views):
            np.multiply(p.grad.reshape(-1), scale, out=view)
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        for p, view in zip(params, views):
            p.grad[...] = view.reshape(p.grad.shape)
        optimizer.step()

    return title, step, lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)


def fixed_cost_figures(key, comm, rounds=6):
    """No communication, the raw mpi4py step and DDP (one bucket) in interleaved rounds, the 20th percentile of
    each (a passing load only ever adds time); the allreduce alone timed in each round, its median kept; and in
    each round the plain model on rank 0 alone while the others sleep: the 1-worker step of the efficiencies."""
    title, mpi4py, allreduce = mpi4py_step(key, comm)
    steps = {"no_comm": distdl_step(key, comm, 0)[1], "mpi4py": mpi4py, "ddp": distdl_step(key, comm, 25)[1]}
    count = agreed_steps(mpi4py, comm, ARGS.seconds / rounds)
    times, alone, one_worker = {name: [] for name in steps}, [], []
    for _ in range(rounds):
        for name, step in steps.items():
            comm.barrier()
            times[name] += timed(step, count)[0]
        comm.barrier()
        alone += timed(allreduce, 50)[0]
        one_worker += _on_rank_zero_alone(comm, lambda: timed(steps["no_comm"], count)[0])
    return {"model": key, "title": title, "framework": "fixed", "comm": statistics.median(alone),
            "one_worker": float(np.percentile(one_worker, STEP_PERCENTILE)) if comm.rank == 0 else 0.0,
            **{name: float(np.percentile(t, STEP_PERCENTILE)) for name, t in times.items()}}


def _on_rank_zero_alone(comm, run):
    """``run()``'s result on rank 0 while every other rank sleeps (it polls a barrier every millisecond, so it
    leaves the machine to rank 0); [] elsewhere."""
    from mpi4py import MPI

    result = run() if comm.rank == 0 else []
    request = MPI.COMM_WORLD.Ibarrier()
    while not request.Test():
        if comm.rank:
            time.sleep(1e-3)
    return result


def worker():
    comm = dl.init(device=ARGS.device)
    if torch is not None:
        torch.set_num_threads(1)
        td.init_process_group(torch_backend(comm.size), init_method=f"tcp://127.0.0.1:{os.environ['BENCH_GLOO_PORT']}",
                              rank=comm.rank, world_size=comm.size)
    results = []
    for key in ARGS.models.split(","):
        if comm.size == 1:
            results.append(ddp_alone_figures(key, comm))
        elif ARGS.device == "cpu":
            results.append(_slowest(comm, fixed_cost_figures(key, comm)))
        for bucket_mb in [0] + ([float(b) for b in ARGS.buckets.split(",")] if comm.size > 1 else []):
            results.append({"model": key, "framework": "distdl", "bucket_mb": bucket_mb,
                            **_slowest(comm, distdl_figures(key, comm, bucket_mb))})
        if torch is not None:
            results.append({"model": key, "framework": "torch", "bucket_mb": 25 if comm.size > 1 else 0,
                            **_slowest(comm, torch_figures(key, comm, comm.size > 1))})
    if comm.rank == 0:
        print(json.dumps(results))
    if torch is not None:
        td.destroy_process_group()
    dl.shutdown()


def torch_backend(workers):
    """NCCL where every worker has a GPU of its own, else gloo (NCCL refuses two ranks on one GPU)."""
    if ARGS.device == "cuda" and workers <= backend.cupy().cuda.runtime.getDeviceCount():
        return "nccl"
    return "gloo"


def _slowest(comm, figures):
    """Each timing as the slowest rank's: the job goes at the pace of its slowest worker."""
    everyone = comm.allgather_json(figures)
    return {k: (max(f[k] for f in everyone) if isinstance(v, float) else v) for k, v in figures.items()}


def launch(n):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(n), sys.executable, __file__, "--worker",
               "--models", ARGS.models, "--buckets", ARGS.buckets, "--seconds", str(ARGS.seconds), "--device", ARGS.device]
    env = dict(os.environ, BENCH_GLOO_PORT=str(free_port()))
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the benchmark job failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if ARGS.worker:
        return worker()
    n = ARGS.n
    alone = launch(1)
    single = {(r["model"], r["framework"]): r for r in alone}
    print_alone([r for r in alone if r["framework"] == "alone"])
    rows = launch(n)
    print_fixed([r for r in rows if r["framework"] == "fixed"], n)
    rows = [r for r in rows if r["framework"] != "fixed"]
    on = "one BLAS thread each" if ARGS.device == "cpu" else f"on GPU local_rank % {backend.cupy().cuda.runtime.getDeviceCount()}"
    print(f"weak scaling, 1 -> {n} workers on this machine, {on}, distdl over MPI"
          + (f"; PyTorch DDP over {torch_backend(n)}" if torch is not None else " (torch not installed or without CUDA)"))
    print("| model | framework | bucket MB | buckets | step ms (1 worker) | step ms | samples/s | efficiency | "
          "comm alone ms | exposed ms | compute ms | hidden share of comm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = single[(row["model"], row["framework"])]
        batch = {"mlp": 128, "cnn": 128, "lstm": 32, "ae": 256}[row["model"]]
        efficiency = base["step"] / row["step"]
        framework = row["framework"] if row["bucket_mb"] or row["framework"] == "torch" else "no communication"
        cells = [row["title"], framework, f"{row['bucket_mb']:g}" if row["bucket_mb"] else "-", str(row.get("buckets", "-")),
                 f"{1e3 * base['step']:.2f}", f"{1e3 * row['step']:.2f}", f"{n * batch / row['step']:,.0f}",
                 f"{efficiency:.2f}"]
        if "comm" in row:
            hidden = 1 - row["exposed"] / row["comm"] if row["comm"] else 0
            cells += [f"{1e3 * row['comm']:.3f}", f"{1e3 * row['exposed']:.3f}",
                      f"{1e3 * (row['step'] - row['exposed']):.2f}", f"{hidden:.0%}"]
        else:
            cells += ["-"] * 4
        print("| " + " | ".join(cells) + " |")


def print_alone(rows):
    print("DDP in a world of one against the plain model, interleaved rounds, 20th percentile of the steps")
    print("| model | plain ms | DDP ms | DDP's cost | torch plain ms | torch DDP ms | torch DDP's cost |")
    print("|---|---|---|---|---|---|---|")
    def cost(plain, wrapped):
        return [f"{1e3 * plain:.3f}", f"{1e3 * wrapped:.3f}", f"{wrapped / plain - 1:+.1%}"]

    for row in rows:
        theirs = cost(row["torch_plain"], row["torch_ddp"]) if "torch_plain" in row else ["-"] * 3
        print("| " + " | ".join([row["title"], *cost(row["plain"], row["ddp"]), *theirs]) + " |")
    print()


def print_fixed(rows, n):
    if not rows:
        return
    print(f"DDP's fixed cost with {n} workers, interleaved rounds, 20th percentile of the steps (slowest rank): "
          "the plain model with no communication, with one raw mpi4py Allreduce of its gradients, and DDP; and the "
          "plain model on rank 0 while the others sleep (1 worker: the efficiencies' reference, in the same rounds)")
    print("| model | 1 worker ms | no comm ms | allreduce alone ms | mpi4py step ms | DDP ms | DDP - mpi4py step ms | "
          "bound ms (no comm + allreduce + 0.05) | DDP - bound ms | efficiency: no comm | mpi4py | DDP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ms = {name: 1e3 * row[name] for name in ("one_worker", "no_comm", "comm", "mpi4py", "ddp")}
        bound = ms["no_comm"] + ms["comm"] + 0.05
        cells = [f"{ms['one_worker']:.3f}", f"{ms['no_comm']:.3f}", f"{ms['comm']:.3f}", f"{ms['mpi4py']:.3f}",
                 f"{ms['ddp']:.3f}", f"{ms['ddp'] - ms['mpi4py']:+.3f}", f"{bound:.3f}", f"{ms['ddp'] - bound:+.3f}",
                 *(f"{ms['one_worker'] / ms[name]:.2f}" for name in ("no_comm", "mpi4py", "ddp"))]
        print("| " + " | ".join([row["title"], *cells]) + " |")
    print()


if __name__ == "__main__":
    main()
