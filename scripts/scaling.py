"""Scaling experiments: a model at a list of worker counts, measured here, and predicted beyond this machine.

    python scripts/scaling.py --model mlp --workers 1,2 --mode weak --batch 128 --backend mpi \\
        --json scaling-mlp.json [--plot scaling-mlp.png] [--predict 8,16,...,1024 --bandwidth 10e9 --latency 5e-6]
    python scripts/scaling.py --cluster 4 --link 1gbit --ranks 2,3,4,6,8 --json cluster.json   # as root

- weak scaling keeps the per-worker batch (--batch), strong scaling the global batch;
- each worker count runs as its own job (distdl-run), one BLAS thread per worker;
- the table gives workers, global batch, samples/s, speed-up, efficiency and the share
  of the step spent in exposed communication (what backward waited for at its end);
- a model of the ZeroMQ allreduce as the steps it waits for and the messages each step puts
  on the links (recursive doubling up to its small-message limit: ranks beyond a power of two
  fold in, log2 p exchanges of n bytes, the folded ranks told; the ring above: 2(p-1) steps of
  n/p; the hierarchical ring on N nodes of L ranks: L-1 steps in the node, 2(N-1) across with
  n/N on each node's link, L-1 in the node). A step costs the CPU c = alpha + (the bytes it
  reduces or copies) s gamma, s ranks per core of this machine; then each link it uses passes its bytes
  from its token bucket (B bytes, filling at the link's rate 1/beta, also while the CPU
  works) and the rest at the slower of the link and the rank's share of a core (a roofline);
  the step ends with its slowest link. Back to back, no link passes more than its rate in the
  long run: a call takes at least its busiest link's bytes times beta (on a real link, B = 0,
  a step takes c + its link's bytes x max(beta, s gamma)). beta and gamma are one per regime (doubling,
  ring); alpha, the per-message cost, one per regime and sharing level s, for it grows faster
  than s (each rank and ZeroMQ's I/O thread wait for a core). Fitted by least relative error
  to allreduces timed by size (each call's slowest rank, the 20th percentile of the calls).
  Predictions beyond this machine: each worker its own core (s = 1), no token bucket, and a
  message costs recursive doubling's alpha at s = 1 (the ring's is hidden by the bucket here);
- the training prediction is compute + overlap * allreduce: the compute per step measured at
  each worker count (each step's slowest rank's time less its wait for the allreduce; beyond
  them, the largest job's), the allreduce of the model's gradients by the fitted model, its
  links rested by the compute (at --predict: by --bandwidth and --latency, or the emulated
  cluster's own fit), and the overlap measured in the jobs (exposed communication over the
  modelled allreduce, one least-squares factor for all the multi-worker jobs); at the
  measured counts the prediction is checked against the step;
- --cluster K --link RATE builds an emulated cluster (scripts/cluster.py: a network namespace
  per node, links shaped with tc tbf, root needed) and times allreduces of 4 KiB to 64 MiB
  (--sizes) at each of --ranks over its links, the ranks spread over as many nodes as divide
  them (8 ranks on 4 nodes: 2 per node); the model is fitted on some sizes and checked on the
  others, the held-out points listed in the JSON record's "held_out". The training jobs run
  across the nodes too (one per node up to K). Links add no latency (no netem here): alpha is
  this machine's per-message cost, not a network's; ``check_model`` refits a record's points;
- a JSON record and, when matplotlib is installed, a PNG plot.
"""

import argparse
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = ",".join(str(n) for n in [4096 * 2 ** k for k in range(5)] + [4 ** k << 18 for k in range(5)])
# 4 KiB .. 64 KiB by twos (recursive doubling, where the link takes over from the CPU), 256 KiB .. 64 MiB by fours
TOLERANCE = 0.10  # held-out points and the training prediction at the measured counts
CORES = os.cpu_count()  # the emulated nodes share this machine's cores
# recursive doubling's limit, cores the ranks share, a link's burst, the nodes the ranks spread over (None: one each)
Where = namedtuple("Where", "limit cores burst nodes")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lstm", "ae"])
    parser.add_argument("--workers", default="1,2", help="worker counts of the training jobs (\"\": none)")
    parser.add_argument("--mode", default="weak", choices=["weak", "strong"])
    parser.add_argument("--batch", type=int, default=128, help="per-worker batch (weak) or global batch (strong)")
    parser.add_argument("--backend", default="auto", choices=["auto", "mpi", "zmq"])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per job and allreduce size")
    parser.add_argument("--predict", default="8,16,32,64,128,256,512,1024")
    parser.add_argument("--bandwidth", type=float, default=10e9, help="network bandwidth in bytes/s (default 80 Gb/s)")
    parser.add_argument("--latency", type=float, default=5e-6, help="network latency in seconds per message")
    parser.add_argument("--cluster", type=int, help="nodes of an emulated cluster to measure on (needs root)")
    parser.add_argument("--link", default="1gbit", help="the emulated cluster's link rate, as tc writes it")
    parser.add_argument("--ranks", default="2,3,4,6,8", help="rank counts of the allreduce jobs on the cluster")
    parser.add_argument("--sizes", default=SIZES, help="allreduce sizes in bytes on the cluster")
    parser.add_argument("--json", "--out", dest="out", default="scaling.json", help="the JSON record")
    parser.add_argument("--plot", help="a PNG of speed-up and efficiency (needs matplotlib)")
    parser.add_argument("--worker", choices=["train", "allreduce"], help=argparse.SUPPRESS)
    return parser.parse_args()


def train_worker(args):
    """One job: time training steps at this world size; in a multi-worker job also time allreduces by size."""
    sys.path.insert(0, str(HERE))
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
    # step k of every rank: the allreduce starts when the last rank has computed its gradients, so the step's
    # compute is its slowest rank's (with ranks sharing a core, not any one rank's typical time), the rest exposed
    times, waits = np.array(times), np.array(waits or [0.0] * steps)
    step_s = float(np.median(comm.allgather(times).max(0) if comm.size > 1 else times))
    compute = float(np.median(comm.allgather(times - waits).max(0) if comm.size > 1 else times))
    record = {"workers": comm.size, "batch_per_worker": batch, "title": title, "model_bytes": model_bytes,
              "step": step_s, "compute": compute, "exposed": step_s - compute}
    if comm.size > 1:
        sizes, nbytes = [], 4096
        while nbytes <= 2 * model_bytes:
            sizes.append(nbytes)
            nbytes *= 4
        record["allreduce"] = time_allreduces(comm, sizes, args.seconds / 4)
    if comm.rank == 0:
        print("RESULT " + json.dumps(record), flush=True)
    dl.shutdown()


def time_allreduces(comm, sizes, seconds, rounds=3):
    """[bytes, seconds] of float32 allreduces of each size: a low percentile of the calls' times, on every rank.

    A call's time is its slowest rank's (the allreduce is done when the last rank has the
    result); of those the 20th percentile: a load passing on the shared cores only ever adds
    time, and a percentile, unlike the single fastest call, does not hang on one lucky
    wake-up. The sizes take turns over ``rounds`` rounds, so that such a load spreads over
    all of them; small ones repeat up to 100 times a round.
    """
    arrays, wanted = [np.zeros(n // 4, np.float32) for n in sizes], []
    for array in arrays:
        comm.allreduce(array, "sum", check=False)  # connections and buffers warm
        start = time.perf_counter()
        comm.allreduce(array, "sum", check=False)
        wanted.append(min(100, max(3, int(seconds / rounds / (time.perf_counter() - start)))))
    reps = comm.allreduce(np.array(wanted, np.int64), "max", check=False)
    times = [[] for _ in sizes]
    for _ in range(rounds):
        for array, count, mine in zip(arrays, reps, times):
            for _ in range(int(count)):
                start = time.perf_counter()
                comm.allreduce(array, "sum", check=False)
                mine.append(time.perf_counter() - start)
    slowest = comm.allreduce(np.concatenate([np.array(t) for t in times]), "max", check=False)
    bounds = np.cumsum([0] + [len(t) for t in times])
    return [[n, float(np.percentile(slowest[a:b], 20))] for n, a, b in zip(sizes, bounds[:-1], bounds[1:])]


def allreduce_worker(args):
    import distdl as dl

    comm = dl.init()
    points = time_allreduces(comm, [int(n) for n in args.sizes.split(",")], args.seconds)  # the same on every rank
    if comm.rank == 0:
        print("RESULT " + json.dumps({"ranks": comm.size, "allreduce": points}), flush=True)
    dl.shutdown()


def worker_env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one BLAS thread per worker


def result_of(what, returncode, stdout, stderr):
    if returncode:
        raise SystemExit(f"the {what} failed:\n{stdout}\n{stderr}")
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def layout(ranks, nodes):
    """(nodes, ranks per node) spreading ``ranks`` over the most of ``nodes`` that divide it evenly."""
    used = max(d for d in range(1, min(ranks, nodes) + 1) if ranks % d == 0)
    return used, ranks // used


def run_job(args, workers, worker_args, cluster=None):
    """The RESULT of ``scaling.py --worker ...`` as a job of ``workers`` ranks, here or across the cluster."""
    script = [__file__, "--worker", *worker_args]
    if cluster is None:
        command = [sys.executable, "-m", "launcher", "-n", str(workers), "--no-tag-output"]
        command += ["--backend", args.backend] if workers > 1 else []
        result = subprocess.run(command + script, capture_output=True, text=True, env=worker_env(), cwd=ROOT)
        return result_of(f"{workers}-worker job", result.returncode, result.stdout, result.stderr)
    nodes, per_node = layout(workers, cluster.nodes)
    procs = cluster.start_job([sys.executable, "-m", "launcher", "-n", str(per_node), "--no-tag-output",
                               "--timeout", "120", *script], env=worker_env(), nodes=nodes, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=900) for p in procs]
    failed = next((i for i, p in enumerate(procs) if p.returncode), 0)
    return result_of(f"{workers}-rank job on {nodes} nodes (node {failed})", procs[failed].returncode,
                     outputs[0][0], outputs[failed][1])


def small_bytes():
    """The ZeroMQ backend's limit of recursive doubling (the ring above it)."""
    from distdl.comm import zmq_backend

    return getattr(zmq_backend, "SMALL_BYTES", 64 * 1024)


def algorithm(nbytes, limit):
    """The fitted regime of ``nbytes``: latency bound (recursive doubling) or bandwidth bound (the rings)."""
    return "doubling" if nbytes <= limit else "ring"


def shape(p, where):
    """(nodes, ranks per node) of ``p`` ranks ``where``: spread over the cluster's nodes, else one rank per node."""
    return layout(p, where.nodes) if where.nodes else (p, 1)


def steps(nbytes, p, where):
    """[(bytes the CPU reduces or copies, [bytes on each link])]: the steps of one rank's allreduce, in sequence.

    A link is one direction of a node's connection to the bridge (tc shapes both): a message
    between ranks on two nodes crosses the sender's "out" and the receiver's "in", one between
    ranks of a node crosses none. Links used alike in every step are listed once.
    Recursive doubling (nodes of consecutive ranks): ranks beyond a power of two p2 fold in
    first (rank r sends to r - p2), then log2 p2 exchanges of the whole array (r with r ^ mask),
    which the CPU reduces, then the folded ranks are told. The flat ring: 2(p-1) steps, each
    rank sending 1/p of the array to the next. The hierarchical ring (several nodes of several
    ranks, distdl/comm/hierarchical.py): L-1 steps inside the node moving 1/L of the array between
    its processes, 2(N-1) steps in which each node puts 1/N of the array on its link to the next,
    and L-1 steps inside the node again.
    """
    if p == 1:
        return []
    nodes, per_node = shape(p, where)
    schedule = []

    def step(local, messages=()):
        links = {}
        for source, dest, size in messages:
            if source // per_node != dest // per_node:
                for link in (("out", source // per_node), ("in", dest // per_node)):
                    links[link] = links.get(link, 0.0) + size
        schedule.append((local, links))

    if algorithm(nbytes, where.limit) == "doubling":
        p2 = 1 << (p.bit_length() - 1)
        if p != p2:
            step(nbytes, [(r, r - p2, nbytes) for r in range(p2, p)])
        for mask in (1 << k for k in range(p2.bit_length() - 1)):
            step(nbytes, [(r, r ^ mask, nbytes) for r in range(p2)])
        if p != p2:
            step(0, [(r - p2, r, nbytes) for r in range(p2, p)])
    elif nodes >= 2 and per_node >= 2:
        for _ in range(per_node - 1):
            step(nbytes / per_node)
        for _ in range(2 * (nodes - 1)):
            step(0, [(k * per_node, (k + 1) % nodes * per_node, nbytes / nodes) for k in range(nodes)])
        for _ in range(per_node - 1):
            step(nbytes / per_node)
    else:
        for _ in range(2 * (p - 1)):
            step(0, [(r, (r + 1) % p, nbytes / p) for r in range(p)])
    links = list({tuple(links.get(link, 0.0) for _, links in schedule): None
                  for link in sorted({link for _, links in schedule for link in links})})
    return [(local, [usage[i] for usage in links]) for i, (local, _) in enumerate(schedule)]


def sharing(p, where):
    """How many ranks share each core of this machine (1 where each has its own, or ``where.cores`` is None)."""
    return max(1.0, p / where.cores) if where.cores else 1.0


def seconds(alpha, beta, gamma, nbytes, p, where, rested=False):
    """One allreduce: each step the CPU's part, then its messages over their links, each link a token bucket.

    A step's CPU part c = alpha (a message's cost) + the bytes it reduces or copies at the rank's share of a
    core (s gamma). Each link's bucket holds up to ``where.burst`` bytes and fills at the link's
    rate 1/beta, also while the CPU works; what a link's bytes exceed its bucket by passes at
    the slower of the link and that share of a core, and the step ends with its slowest link.
    Back to back with the last call (not ``rested``), no link passes more than its rate in the
    long run: the call takes at least its busiest link's bytes times beta (at 2 and 3 ranks x 32 KiB the
    buckets drain over the calls; one call from full buckets is 27-33% short). ``rested``:
    after the links idled (a training step's compute), every bucket full. A real link (burst 0):
    each step takes c + bytes x max(beta, s gamma).
    """
    schedule = steps(nbytes, p, where)
    if not schedule:
        return 0.0
    s, burst = sharing(p, where), where.burst
    tokens = [burst] * len(schedule[0][1])
    total = 0.0
    for local, links in schedule:
        cpu = alpha + local * gamma * s
        ready = [np.minimum(burst, held + cpu / beta) for held in tokens]
        moving = [np.maximum(size - held, 0.0) * np.maximum(beta, gamma * s) for size, held in zip(links, ready)]
        took = cpu + functools.reduce(np.maximum, moving, 0.0)  # no link: all on one node
        tokens = [np.minimum(burst, np.maximum(held - size + move / beta, 0.0) + (took - cpu - move) / beta)
                  for size, held, move in zip(links, ready, moving)]
        total = total + took
    if not rested:
        for i in range(len(tokens)):
            total = np.maximum(total, sum(links[i] for _, links in schedule) * beta)
    return total


def fit(points, where):
    """{regime: {"alpha": [[s, alpha], ...], "beta", "gamma"}} of least relative error over ``points``.

    Points are (ranks, bytes, seconds). beta and gamma are shared by every rank count; alpha, the
    per-message cost, is fitted per sharing level s (ranks per core): with each rank and ZeroMQ's
    I/O thread waiting for a core, it grows faster than s (recursive doubling: 0.16, 0.47, 1.05 ms
    at s = 1, 2, 4 here). A grid search, refined once around its best point.
    """
    model = {}
    for kind in ("doubling", "ring"):
        ours = [(p, n, t) for p, n, t in points if algorithm(n, where.limit) == kind]
        if not ours:
            continue
        levels = sorted({sharing(p, where) for p, _, _ in ours})
        groups = [[(p, n, t) for p, n, t in ours if sharing(p, where) == s] for s in levels]
        betas = gammas = np.geomspace(1e-12, 1e-6, 97)
        alphas = [np.geomspace(1e-7, 1e-1, 241)] * len(levels)
        for _ in range(2):
            beta, gamma, alpha = search(groups, betas, gammas, alphas, where)
            betas, gammas = np.geomspace(beta / 1.2, beta * 1.2, 25), np.geomspace(gamma / 1.2, gamma * 1.2, 25)
            alphas = [np.geomspace(a / 1.06, a * 1.06, 61) for a in alpha]
        model[kind] = {"alpha": [[s, a] for s, a in zip(levels, alpha)], "beta": beta, "gamma": gamma}
    return model


def search(groups, betas, gammas, alphas, where):
    """(beta, gamma, [alpha of each group]) on the grids: per (beta, gamma) each group's best alpha."""
    b, g, total, best = betas[:, None, None], gammas[None, :, None], 0.0, []
    for group, grid in zip(groups, alphas):
        a = grid[None, None, :]
        error = sum((seconds(a, b, g, n, p, where) / t - 1) ** 2 for p, n, t in group)  # [beta, gamma, alpha]
        best.append(error.argmin(-1))
        total = total + error.min(-1)
    i, j = np.unravel_index(np.argmin(total), total.shape)
    return float(betas[i]), float(gammas[j]), [float(grid[k[i, j]]) for grid, k in zip(alphas, best)]


def alpha_at(fitted, s):
    """The fitted per-message cost of the sharing level nearest ``s`` (by ratio): beyond this machine, each worker
    with its own core, s = 1, the least shared level measured."""
    return min(fitted, key=lambda level: (abs(math.log(level[0] / s)), level[0]))[1]


def predict(model, nbytes, p, where, rested=False):
    """Seconds of one allreduce of ``nbytes`` among ``p`` ranks ``where`` (cores shared, a link's burst, nodes)."""
    if p == 1:
        return 0.0
    regime = model.get(algorithm(nbytes, where.limit)) or model["ring"]
    alpha = alpha_at(regime["alpha"], sharing(p, where))
    return float(seconds(alpha, regime["beta"], regime["gamma"], nbytes, p, where, rested))


def split(sizes, limit):
    """(fitted, held out) sizes: per algorithm the smallest, the largest and every other one are fitted."""
    fitted, held = [], []
    for kind in ("doubling", "ring"):
        ours = sorted(n for n in sizes if algorithm(n, limit) == kind)
        for i, n in enumerate(ours):
            (fitted if i % 2 == 0 or i == len(ours) - 1 or len(ours) < 3 else held).append(n)
    return fitted, held


def size_name(nbytes):
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def cluster_allreduce(args, cluster, where):
    """Time allreduces at every --ranks count over the cluster's links, fit on some sizes, check on the others."""
    measured = []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        nodes, per_node = layout(ranks, cluster.nodes)
        if nodes < 2:
            print(f"{ranks} ranks do not divide over 2 or more of {cluster.nodes} nodes: skipped", file=sys.stderr)
            continue
        job = run_job(args, ranks, ["allreduce", "--sizes", args.sizes, "--seconds", str(args.seconds)], cluster)
        measured += [(ranks, n, t) for n, t in job["allreduce"]]
    print(f"allreduce on {cluster.nodes} emulated nodes, links {args.link} (token bucket {where.burst >> 10} KiB)")
    return check_model(measured, where)


def check_model(measured, where):
    """Fit the model on some sizes of ``measured`` (ranks, bytes, seconds), print it and its table, check the rest."""
    fitted_sizes, held_sizes = split(sorted({n for _, n, _ in measured}), where.limit)
    model = fit([m for m in measured if m[1] in fitted_sizes], where)
    held_out = [{"ranks": p, "bytes": n, "measured_s": t, "predicted_s": predict(model, n, p, where)}
                for p, n, t in measured if n in held_sizes]
    print(f"fitted on {', '.join(map(size_name, fitted_sizes))}, held out {', '.join(map(size_name, held_sizes)) or 'none'}")
    for kind, regime in model.items():
        alphas = ", ".join(f"{1e6 * a:.0f} us at s = {level:g}" for level, a in regime["alpha"])
        print(f"  {kind}: alpha {alphas} (s ranks per core); link 1/beta {1 / regime['beta'] / 1e6:.1f} MB/s, "
              f"one core's CPU 1/gamma {1 / regime['gamma'] / 1e6:.1f} MB/s ({CORES} cores shared by the ranks)")
    print("| ranks | nodes x ranks | bytes | measured ms | model ms | error | |")
    print("|---|---|---|---|---|---|---|")
    for p, n, t in measured:
        modelled = predict(model, n, p, where)
        nodes, per_node = shape(p, where)
        role = "held out" if n in held_sizes else "fitted"
        print(f"| {p} | {nodes} x {per_node} | {size_name(n)} | {1e3 * t:.3f} | {1e3 * modelled:.3f} | "
              f"{modelled / t - 1:+.1%} | {role} |")
    worst = max((abs(h["predicted_s"] / h["measured_s"] - 1) for h in held_out), default=0.0)
    print(f"held-out points: {len(held_out)}, the worst {worst:.1%} off the model "
          f"({'within' if worst <= TOLERANCE else 'NOT within'} {TOLERANCE:.0%})")
    return {"model": model, "small_bytes": where.limit, "cores": where.cores, "burst_bytes": where.burst,
            "allreduce_points": [{"ranks": p, "bytes": n, "measured_s": t,
                                  "predicted_s": predict(model, n, p, where),
                                  "held_out": n in held_sizes} for p, n, t in measured],
            "fitted_sizes": fitted_sizes, "held_out": held_out, "held_out_worst": worst}


def scaling_table(args, records):
    base = records[0]
    rows = []
    for r in records:
        global_batch = r["batch_per_worker"] * r["workers"]
        rate = global_batch / r["step"]
        speedup = rate / (base["batch_per_worker"] * base["workers"] / base["step"]) * base["workers"]
        rows.append({"workers": r["workers"], "global_batch": global_batch, "samples_per_s": rate,
                     "speedup": speedup, "efficiency": speedup / r["workers"],
                     "exposed_share": r["exposed"] / r["step"], "step_ms": 1e3 * r["step"]})
    print("| workers | global batch | step ms | samples/s | speed-up | efficiency | exposed communication |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['global_batch']} | {row['step_ms']:.2f} | {row['samples_per_s']:,.0f} | "
              f"{row['speedup']:.2f} | {row['efficiency']:.2f} | {row['exposed_share']:.0%} |")
    return rows


def training_prediction(args, records, here, beyond):
    """Step = compute + overlap * modelled allreduce, checked at the measured counts, then predicted beyond.

    ``here`` (model, where) is the allreduce where the jobs ran (the overlap is measured against
    it), ``beyond`` the network of the predictions.
    """
    base, biggest = records[0], records[-1]
    nbytes = base["model_bytes"]
    bare = {r["workers"]: predict(here[0], nbytes, r["workers"], here[1], rested=True) for r in records}
    # one overlap for every job: the least relative error of exposed = overlap x modelled bare allreduce
    weights = [(bare[r["workers"]] / r["step"], r["exposed"] / r["step"]) for r in records if bare[r["workers"]]]
    overlap = sum(m * e for m, e in weights) / sum(m * m for m, _ in weights) if weights else 0.0
    print(f"\noverlap: the exposed communication is {overlap:.2f} x the modelled bare allreduce of the "
          f"{nbytes / 1e6:.2f} MB of gradients (least squares over the {len(weights)} multi-worker jobs)")
    print("| workers | measured step ms | compute ms | modelled allreduce ms | predicted step ms | error |")
    print("|---|---|---|---|---|---|")
    checks = []
    for r in records:
        compute = r["compute"]
        comm_time = bare[r["workers"]]
        predicted = compute + overlap * comm_time
        checks.append({"workers": r["workers"], "measured_s": r["step"], "compute_s": compute,
                       "allreduce_s": comm_time, "predicted_s": predicted})
        print(f"| {r['workers']} | {1e3 * r['step']:.2f} | {1e3 * compute:.2f} | {1e3 * comm_time:.3f} | "
              f"{1e3 * predicted:.2f} | {predicted / r['step'] - 1:+.1%} |")
    compute_here = biggest["compute"]  # includes DDP's own work and the sharing of the machine
    predictions = []
    print("| workers | compute ms | allreduce ms | exposed ms | predicted step ms | efficiency |")
    print("|---|---|---|---|---|---|")
    for p in (int(n) for n in args.predict.split(",") if n):
        compute = compute_here if args.mode == "weak" else compute_here * biggest["workers"] / p
        comm_time = predict(beyond[0], nbytes, p, beyond[1], rested=True)
        step = compute + overlap * comm_time
        efficiency = base["step"] / step if args.mode == "weak" else base["step"] / (p * step)
        predictions.append({"workers": p, "compute": compute, "allreduce": comm_time, "step": step,
                            "efficiency": efficiency})
        print(f"| {p} | {1e3 * compute:.2f} | {1e3 * comm_time:.3f} | {1e3 * overlap * comm_time:.3f} | "
              f"{1e3 * step:.2f} | {efficiency:.2f} |")
    return {"overlap": overlap, "training_check": checks, "predicted": predictions}


def main():
    args = parse_args()
    if args.worker:
        return (train_worker if args.worker == "train" else allreduce_worker)(args)
    limit = small_bytes()
    beyond = Where(limit, None, 0, None)  # a real cluster: each worker its own core, links without a token bucket
    if args.cluster:
        sys.path.insert(0, str(HERE))
        from cluster import Cluster, ClusterError

        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: the cluster goes
        try:
            with Cluster(args.cluster, args.link) as cluster:
                return experiment(args, Where(limit, CORES, cluster.burst, cluster.nodes), beyond, cluster)
        except ClusterError as exc:
            raise SystemExit(f"scaling.py --cluster: {exc}")
    return experiment(args, Where(limit, CORES, 0, None), beyond, None)


def experiment(args, where, beyond_where, cluster):
    record = {"args": vars(args)}
    if cluster:
        record.update(cluster_allreduce(args, cluster, where))
        print()
    train_args = ["train", "--model", args.model, "--mode", args.mode, "--batch", str(args.batch),
                  "--seconds", str(args.seconds)]
    counts = [int(n) for n in args.workers.split(",") if n]
    if not counts:  # --workers "": the allreduces alone
        return save(record, args)
    records = [run_job(args, n, train_args, cluster if n > 1 else None) for n in counts]
    title = records[0]["title"].rsplit(" b", 1)[0]  # the workload's own batch is not the one used here
    on = f"{cluster.nodes} emulated nodes, links {args.link}" if cluster else f"{args.backend} backend"
    print(f"{args.mode} scaling of {title}, {on}, batch {args.batch} "
          f"{'per worker' if args.mode == 'weak' else 'global'}")
    record.update({"title": title, "measured": scaling_table(args, records), "jobs": records})
    biggest = records[-1]
    if cluster:
        here = record["model"]
        # a real link has no token bucket to hide the ring's per-step cost in (it leaves the ring's alpha at s = 1
        # unmeasured): each message costs recursive doubling's, whose small messages measure it
        message = alpha_at((here.get("doubling") or here["ring"])["alpha"], 1.0)
        beyond = {kind: {**regime, "alpha": [[1.0, message]]} for kind, regime in here.items()}
        network = f"the emulated {args.link} links without a token bucket, each worker with its own core (s = 1)"
    elif "allreduce" in biggest:
        here = fit([(biggest["workers"], n, t) for n, t in biggest["allreduce"]], where)
        beyond = {kind: {"alpha": [[1.0, args.latency]], "beta": 1 / args.bandwidth, "gamma": 0.0}
                  for kind in ("doubling", "ring")}
        network = f"a network of {args.bandwidth / 1e9:g} GB/s and {1e6 * args.latency:g} us latency"
        print(f"\nalpha-beta fit on {biggest['workers']} local workers: " + ", ".join(
            f"{kind} alpha {1e6 * alpha_at(m['alpha'], 1.0):.2f} us, 1/beta {1 / m['beta'] / 1e9:.2f} GB/s"
            for kind, m in here.items()))
    else:
        here = None
    if here:
        regime = here.get("ring") or next(iter(here.values()))
        record["alpha"], record["beta"] = alpha_at(regime["alpha"], 1.0), regime["beta"]
        record.update(training_prediction(args, records, (here, where), (beyond, beyond_where)))
        print(f"(predictions over {network})")
    return save(record, args)


def save(record, args):
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    if args.plot and "measured" in record:
        plotted = plot(record, args.plot)
    print(f"\nwrote {args.out}" + (f" and {args.plot}" if args.plot and "measured" in record and plotted else ""))
    return 0


def plot(record, path):
    """Draw the record to ``path``; False (and said) where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    measured, predicted = record["measured"], record.get("predicted", [])
    panels = 3 if "allreduce_points" in record else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    speed, efficiency = axes[0], axes[1]
    workers = [m["workers"] for m in measured]
    speed.plot(workers, [m["speedup"] for m in measured], "o-", label="measured")
    efficiency.plot(workers, [m["efficiency"] for m in measured], "o-", label="measured")
    # the model, open markers: checked at the measured counts (here), predicted beyond them (--predict's network)
    check = {c["workers"]: c for c in record.get("training_check", [])}
    here = [(m["workers"], m["efficiency"] * check[m["workers"]]["measured_s"] / check[m["workers"]]["predicted_s"])
            for m in measured if m["workers"] in check]
    beyond = [(p["workers"], p["efficiency"]) for p in predicted]
    for points, style, label in ((here, "D", "model, here"), (beyond, "s:", "predicted")):
        if points:
            ps, es = zip(*points)
            speed.plot(ps, [p * e for p, e in points], style, color="C1", mfc="none", label=label)
            efficiency.plot(ps, es, style, color="C1", mfc="none", label=label)
    ticks = sorted(set(workers) | {p["workers"] for p in predicted})
    speed.plot(ticks, ticks, "k--", label="ideal")
    efficiency.axhline(1.0, color="k", linestyle="--", label="ideal")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (speed, efficiency):
        if ticks[-1] / ticks[0] > 16:
            axis.set_xscale("log", base=2)
            axis.set_yscale("log", base=2) if axis is speed else None
        axis.xaxis.set_major_locator(FixedLocator(ticks))  # whole workers only
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticklabels([str(t) for t in ticks], rotation=45 if len(ticks) > 8 else 0)
        axis.yaxis.set_major_formatter(plain)
        axis.legend()
    speed.set(xlabel="workers", ylabel="speed-up (x one worker)", title=f"{record['title']}: speed-up")
    efficiency.set(xlabel="workers", ylabel="parallel efficiency", title=f"{record['title']}: efficiency")
    lowest = min(e for e in [m["efficiency"] for m in measured] + [e for _, e in here + beyond] if e > 0)
    if lowest < 0.1:  # a linear axis would flatten everything below 0.1 onto zero
        efficiency.set_yscale("log")
        efficiency.yaxis.set_major_formatter(plain)
        efficiency.set_ylim(lowest / 2, 1.5)
    else:
        efficiency.set_ylim(0, 1.1)
    if panels == 3:
        ranks = sorted({m["ranks"] for m in record["allreduce_points"]})
        right = axes[2]
        colours = {}
        for p in ranks:
            ours = [m for m in record["allreduce_points"] if m["ranks"] == p]
            line, = right.plot([m["bytes"] for m in ours], [m["predicted_s"] for m in ours], "-")
            colours[p] = line.get_color()
            right.plot([m["bytes"] for m in ours if not m["held_out"]],
                       [m["measured_s"] for m in ours if not m["held_out"]], "o", color=colours[p])
            right.plot([m["bytes"] for m in ours if m["held_out"]], [m["measured_s"] for m in ours if m["held_out"]],
                       "D", mfc="none", color=colours[p])
        sizes = sorted({m["bytes"] for m in record["allreduce_points"]})
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.xaxis.set_major_locator(FixedLocator(sizes))
        right.xaxis.set_minor_locator(NullLocator())
        right.set_xticklabels([size_name(b) for b in sizes], rotation=45)
        right.set(xlabel="allreduce size", ylabel="allreduce seconds",
                  title=f"allreduce, {record['args']['link']} links")
        keys = [Line2D([], [], color=colours[p], label=f"{p} ranks") for p in ranks] + [
            Line2D([], [], color="grey", marker="o", linestyle="none", label="measured, fitted"),
            Line2D([], [], color="grey", marker="D", mfc="none", linestyle="none", label="measured, held out"),
            Line2D([], [], color="grey", label="model")]
        right.legend(handles=keys, fontsize="small", ncol=2, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


if __name__ == "__main__":
    sys.exit(main())
