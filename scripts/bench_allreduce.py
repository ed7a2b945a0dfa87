"""Allreduce latency and bandwidth of distdl's backends, next to raw mpi4py and torch.distributed (gloo).

    python scripts/bench_allreduce.py [-n 2] [--max-mib 64] [--rounds 3] [--only mpi|zmq] [--curve]
    python scripts/bench_allreduce.py --cluster 2 --link 1gbit -n 2   # as root: 2 emulated nodes x 2 ranks

Runs two jobs of ``n`` ranks on this machine:
(1) under mpiexec: raw mpi4py ``Allreduce(IN_PLACE)`` against distdl's MPI backend,
    unchecked (DDP's steady state) and with the signature check;
(2) as ZeroMQ workers: distdl's ZeroMQ backend against torch.distributed's gloo
    backend (when torch is installed; it is never a dependency), and, where the ranks share
    memory, the same backend with its ring over ipc:// sockets instead; with ``--curve`` once more
    with CURVE on every connection (DISTDL_ZMQ_SECURITY=curve), against the default scheme.
float32 sum, sizes 4 KiB to ``--max-mib`` MiB. Per size the contenders alternate over
``--rounds`` rounds (machine drift hits all alike); each figure is the median round.
With ``--cluster K --link RATE`` the ZeroMQ job alone runs on an emulated cluster
(scripts/cluster.py: a network namespace per node, links shaped with tc tbf), ``n`` ranks
on each of the K nodes: the hierarchical allreduce against the flat ring, in the same job;
with ``--only mpi`` instead raw MPICH Allreduce, one job for each of its compositions
(MPIR_CVAR_ALLREDUCE_COMPOSITION: auto, node-local reduce + inter-node + broadcast, flat),
mpiexec in node 0's namespace and each node's Hydra proxy started in its own.
algbw = bytes / time; busbw = algbw * 2(n-1)/n, the convention of nccl-tests.
"""

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from workloads import free_port  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2, help="ranks")
    parser.add_argument("--max-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.15, help="least time per contender, size and round")
    parser.add_argument("--only", choices=["mpi", "zmq"], help="run one of the two jobs")
    parser.add_argument("--curve", action="store_true", help="also time ZeroMQ with CURVE encryption")
    parser.add_argument("--cluster", type=int, help="nodes of an emulated cluster (root needed); -n ranks on each")
    parser.add_argument("--link", default="1gbit", help="the emulated cluster's link rate, as tc writes it")
    parser.add_argument("--worker", choices=["mpi", "mpich", "zmq"], help=argparse.SUPPRESS)
    return parser.parse_args()


def sizes(max_mib):
    size = 4 * 1024
    while size <= max_mib * 1024 * 1024:
        yield size
        size *= 4


def measure(contenders, barrier, agree_max, args):
    """{name: median seconds per call} for one size, contenders alternating round by round.

    A short calibration picks the number of calls; every rank then makes the same
    number (the largest any rank asked for), so no collective is left unmatched.
    """
    results = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, function in contenders.items():
            function()
            start = time.perf_counter()
            for _ in range(3):
                function()
            per_call = (time.perf_counter() - start) / 3
            calls = agree_max(max(3, int(args.seconds / per_call)))
            barrier()
            start = time.perf_counter()
            for _ in range(calls):
                function()
            results[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(times) for name, times in results.items()}


OVERLAP_BYTES = 16 << 20


def overlap(starters, blocking, barrier, agree_max, rounds):
    """How much of a 16 MiB allreduce hides behind compute of the same length, for each way of starting it.

    {name: (seconds of comm + compute, share of the shorter of the two that was hidden)}.
    """
    x = np.random.default_rng(0).random((256, 256))

    def timed(function):
        barrier()
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    comm_alone = statistics.median(timed(blocking) for _ in range(rounds))
    one_gemm = statistics.median(timed(lambda: x @ x) for _ in range(5))
    gemms = agree_max(max(1, int(comm_alone / one_gemm)))

    def compute():
        for _ in range(gemms):
            x @ x

    compute_alone = statistics.median(timed(compute) for _ in range(rounds))
    out = {"comm alone": (comm_alone, 0.0), "compute alone": (compute_alone, 0.0)}
    for name, start in starters.items():
        def both():
            request = start()
            compute()
            request()
        total = statistics.median(timed(both) for _ in range(rounds))
        out[name] = (total, (comm_alone + compute_alone - total) / min(comm_alone, compute_alone))
    return out


def mpi_worker(args):
    from mpi4py import MPI

    import distdl as dl

    comm = dl.init("mpi")
    raw = MPI.COMM_WORLD.Dup()

    def agree_max(calls):
        return raw.allreduce(calls, op=MPI.MAX)

    table = []
    for nbytes in sizes(args.max_mib):
        a = np.zeros(nbytes // 4, np.float32)
        contenders = {
            "mpi4py": lambda: raw.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM),
            "distdl mpi": lambda: comm.allreduce(a, check=False),
            "distdl mpi checked": lambda: comm.allreduce(a),
        }
        table.append({"bytes": nbytes, **measure(contenders, raw.Barrier, agree_max, args)})
    a = np.zeros(OVERLAP_BYTES // 4, np.float32)
    starters = {
        "distdl iallreduce (communication thread)": lambda: comm.iallreduce(a, check=False).wait,
        "MPI Iallreduce (no thread)": lambda: raw.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM).Wait,
    }
    hidden = overlap(starters, lambda: comm.allreduce(a, check=False), raw.Barrier, agree_max, args.rounds * 3)
    if comm.rank == 0:
        print(json.dumps({"table": table, "overlap": hidden}))
    dl.shutdown()


def zmq_worker(args):
    import distdl as dl

    comm = dl.init("zmq")
    try:
        if "BENCH_GLOO_PORT" not in os.environ:
            raise ImportError("no gloo on the emulated cluster")
        import torch
        import torch.distributed as td

        td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['BENCH_GLOO_PORT']}",
                              rank=comm.rank, world_size=comm.size)
    except ImportError:
        torch = None

    def agree_max(calls):
        return int(comm.allreduce(np.array([calls], np.int64), "max", check=False)[0])

    comm.allreduce(np.zeros(1 << 18, np.float32))  # a large allreduce maps the ranks' shared memory, if they have it
    table = []
    for nbytes in sizes(args.max_mib):
        a = np.zeros(nbytes // 4, np.float32)
        contenders = {"distdl zmq": lambda: comm.allreduce(a, check=False)}
        if comm._shm and comm.ring_layout == "flat ring":
            contenders["distdl zmq ipc"] = lambda: over_ipc(comm, a)
        if comm.ring_layout != "flat ring":
            contenders["distdl zmq flat ring"] = lambda: flat_ring(comm, a)
        if torch is not None:
            t = torch.zeros(nbytes // 4)
            contenders["gloo"] = lambda: td.all_reduce(t)
        table.append({"bytes": nbytes, **measure(contenders, comm.barrier, agree_max, args)})
    a = np.zeros(OVERLAP_BYTES // 4, np.float32)
    starters = {"distdl iallreduce (communication thread)": lambda: comm.iallreduce(a, check=False).wait}
    if torch is not None:
        t = torch.zeros(OVERLAP_BYTES // 4)
        starters["gloo all_reduce(async_op=True)"] = lambda: td.all_reduce(t, async_op=True).wait
    hidden = overlap(starters, lambda: comm.allreduce(a, check=False), comm.barrier, agree_max, args.rounds * 3)
    if comm.rank == 0:
        print(json.dumps({"table": table, "overlap": hidden}))
    if torch is not None:
        td.destroy_process_group()
    dl.shutdown()


def set_aside(attribute, replacement, doc):
    """An allreduce with ``comm.<attribute>`` replaced for the call: the path it takes without that part."""
    def allreduce(comm, array):
        kept = getattr(comm, attribute)
        setattr(comm, attribute, replacement)
        try:
            comm.allreduce(array, check=False)
        finally:
            setattr(comm, attribute, kept)
    allreduce.__doc__ = doc
    return allreduce


over_ipc = set_aside("_shm", False, "The allreduce without shared memory: the ring over ipc:// sockets it replaces.")
flat_ring = set_aside("_hierarchy", None, "The allreduce without the hierarchy: the flat ring it replaces.")


def mpich_worker(args):
    """Raw MPICH Allreduce alone, no distdl: its composition is the one the environment chose."""
    from mpi4py import MPI

    raw = MPI.COMM_WORLD
    table = []
    for nbytes in sizes(args.max_mib):
        a = np.zeros(nbytes // 4, np.float32)
        contenders = {"mpi4py": lambda: raw.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)}
        table.append({"bytes": nbytes, **measure(contenders, raw.Barrier,
                                                 lambda calls: raw.allreduce(calls, op=MPI.MAX), args)})
    if raw.rank == 0:
        print(json.dumps({"table": table}))


MPICH_COMPOSITIONS = {"auto": "0", "hierarchical": "1", "flat": "2"}  # MPIR_CVAR_ALLREDUCE_COMPOSITION


def zmq_on_cluster(cluster, args, script, env):
    """The zmq job as ``-n`` ranks on each node of the emulated cluster; rank 0's output."""
    procs = cluster.start_job([sys.executable, "-m", "launcher", "-n", str(args.n), "--backend", "zmq",
                               "--no-tag-output", *script[1:]], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=1800) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"the zmq benchmark failed on the cluster: {[p.returncode for p in procs]}\n"
                         + "\n".join(err for _, err in outputs))
    return outputs[0][0]


def mpich_on_cluster(cluster, args, script, env):
    """One MPICH job across the cluster: mpiexec in node 0's namespace, Hydra's manual launcher printing each
    node's proxy command, which starts here in that node's namespace; rank 0's output."""
    hosts = ",".join(f"{address}:{args.n}" for address in cluster.addresses)
    mpiexec = cluster.popen(0, [str(Path(sys.executable).parent / "mpiexec"), "-iface", "eth0", "-hosts", hosts,
                                "-launcher", "manual", "-n", str(args.cluster * args.n), *script],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proxies = []
    for line in iter(mpiexec.stdout.readline, ""):
        if line.startswith("HYDRA_LAUNCH:"):
            command = line[len("HYDRA_LAUNCH:"):].strip()
            node = int(re.search(r"--proxy-id (\d+)", command).group(1))
            proxies.append(cluster.popen(node, ["sh", "-c", command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
        elif line.startswith("HYDRA_LAUNCH_END"):
            break
    out = mpiexec.stdout.read()  # rank 0's table, after the launch lines
    for proc in [mpiexec, *proxies]:
        proc.wait(timeout=60)
    if mpiexec.returncode:
        raise SystemExit(f"the MPICH benchmark failed on the cluster ({mpiexec.returncode}):\n{out}")
    return out


def launch(args, backend, cluster=None, **extra_env):
    script = [sys.executable, __file__, "--worker", backend, "--max-mib", str(args.max_mib), "--rounds",
              str(args.rounds), "--seconds", str(args.seconds)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra_env)
    if cluster is not None:
        out = (mpich_on_cluster if backend == "mpich" else zmq_on_cluster)(cluster, args, script, env)
    elif backend == "mpi":
        mpiexec = Path(sys.executable).parent / "mpiexec"
        out = subprocess.run([str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(args.n)] + script,
                             env=env, capture_output=True, text=True, check=True).stdout
    else:
        port, gloo_port, token = free_port(), free_port(), secrets.token_hex(8)
        procs = [subprocess.Popen(script, env=dict(env, DISTDL_RANK=str(r), DISTDL_WORLD_SIZE=str(args.n),
                                                   DISTDL_MASTER_ADDR="127.0.0.1", DISTDL_MASTER_PORT=str(port),
                                                   DISTDL_RUN_ID=token, BENCH_GLOO_PORT=str(gloo_port)),
                                  stdout=subprocess.PIPE, text=True) for r in range(args.n)]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"the zmq benchmark workers failed: {[p.returncode for p in procs]}")
        out = outputs[0]
    return json.loads(out.strip().splitlines()[-1])


def human(nbytes):
    return f"{nbytes // 1024} KiB" if nbytes < 1 << 20 else f"{nbytes >> 20} MiB"


def print_table(title, rows, names, reference, n):
    print(f"\n{title}")
    header = ["size"] + [f"{name} us" for name in names] + [f"{name} busbw GB/s" for name in names]
    header += [f"{name} / {reference} time" for name in names if name != reference]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        times = [row[name] for name in names]
        busbw = [row["bytes"] / t / 1e9 * 2 * (n - 1) / n for t in times]
        ratios = [row[name] / row[reference] for name in names if name != reference]
        cells = [human(row["bytes"])] + [f"{1e6 * t:.1f}" for t in times] + [f"{b:.2f}" for b in busbw]
        cells += [f"{r:.2f}x" for r in ratios]
        print("| " + " | ".join(cells) + " |")


def print_overlap(title, hidden):
    print(f"\n{title}")
    print("| how | seconds | hidden share of the shorter |")
    print("|---|---|---|")
    for name, (seconds, share) in hidden.items():
        print(f"| {name} | {seconds:.4f} | {'-' if name.endswith('alone') else f'{share:.0%}'} |")


def main():
    args = parse_args()
    if args.worker == "mpi":
        return mpi_worker(args)
    if args.worker == "zmq":
        return zmq_worker(args)
    if args.worker == "mpich":
        return mpich_worker(args)
    if args.cluster:
        print(f"{args.cluster} emulated nodes x {args.n} ranks, links {args.link}, float32 sum, median of "
              f"{args.rounds} alternating rounds")
        return run_cluster_job(args)
    print(f"{args.n} ranks on one machine, float32 sum, median of {args.rounds} alternating rounds")
    if args.only != "zmq":
        run_mpi_job(args)
    if args.only != "mpi":
        run_zmq_job(args)


def run_mpi_job(args):
    mpi = launch(args, "mpi")
    mpi_rows = mpi["table"]
    print_table("MPI: distdl against raw mpi4py (time ratio: <= 1.2x at 4 KiB, bandwidth >= 0.95x from 1 MiB)",
                mpi_rows, ["mpi4py", "distdl mpi", "distdl mpi checked"], "mpi4py", args.n)
    print_overlap("MPI: a 16 MiB allreduce started before compute of the same length, then waited for",
                  mpi["overlap"])


def run_cluster_job(args):
    from cluster import Cluster, ClusterError

    ranks = args.cluster * args.n
    try:
        with Cluster(args.cluster, args.link) as cluster:
            if args.only == "mpi":
                tables = {name: launch(args, "mpich", cluster, MPIR_CVAR_ALLREDUCE_COMPOSITION=code)["table"]
                          for name, code in MPICH_COMPOSITIONS.items()}
            else:
                rows = launch(args, "zmq", cluster)["table"]
    except ClusterError as exc:
        raise SystemExit(f"bench_allreduce.py --cluster: {exc}")
    if args.only == "mpi":
        rows = [{"bytes": row["bytes"], **{name: tables[name][i]["mpi4py"] for name in tables}}
                for i, row in enumerate(tables["auto"])]
        print_table(f"MPICH on {args.cluster} nodes x {args.n} ranks (UCX_TLS={os.environ.get('UCX_TLS', 'default')}):"
                    " each MPIR_CVAR_ALLREDUCE_COMPOSITION in its own job", rows, list(tables), "flat", ranks)
        return
    names = ["distdl zmq"] + (["distdl zmq flat ring"] if "distdl zmq flat ring" in rows[0] else [])
    print_table(f"ZeroMQ on {args.cluster} nodes x {args.n} ranks: the default layout against the flat ring", rows,
                names, names[-1], ranks)


def run_zmq_job(args):
    zmq = launch(args, "zmq")
    zmq_rows = zmq["table"]
    names = ["distdl zmq"] + [name for name in ("distdl zmq ipc", "gloo") if name in zmq_rows[0]]
    print_table("ZeroMQ: distdl against torch.distributed gloo (issue 18: time <= 0.25x at 4 KiB, <= 0.5x from 1 MiB)",
                zmq_rows, names, names[-1], args.n)
    print_overlap("ZeroMQ: a 16 MiB allreduce started before compute of the same length, then waited for",
                  zmq["overlap"])
    if args.curve:
        curve = launch(args, "zmq", DISTDL_ZMQ_SECURITY="curve")["table"]
        rows = [{"bytes": plain["bytes"], "default": plain["distdl zmq"], "curve": encrypted["distdl zmq"]}
                for plain, encrypted in zip(zmq_rows, curve)]
        print_table("ZeroMQ: CURVE on every connection against the default scheme (README, threat model)",
                    rows, ["default", "curve"], "default", args.n)


if __name__ == "__main__":
    main()
