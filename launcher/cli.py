"""distdl-run [options] script.py [script args] | -m module [args]: run a distdl job on this machine or node."""

import argparse
import hashlib
import os
import signal
import sys
from importlib import metadata

from launcher.agent import Agent, Solo, say
from launcher.keeper import become_subreaper
from launcher.nodes import Coordinator, Member, NodeError
from launcher.secret import SecretError, job_secret
from launcher.spec import JobSpec, find_mpiexec, mpi_works


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="distdl-run", description="Start N distdl workers, watch them, stop the job when one fails, "
        "restart it from the newest checkpoint if asked.")
    parser.add_argument("-n", "--nproc-per-node", type=int, default=1, dest="nproc", help="workers on this node")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=0, help="0: a free port (single node only)")
    parser.add_argument("--backend", choices=["auto", "mpi", "zmq"], default="auto",
                        help="auto: MPI when its runtime works here, else ZeroMQ (always ZeroMQ across nodes)")
    parser.add_argument("--max-restarts", type=int, default=0, help="restart the whole job (every node) from the "
                        "newest checkpoint up to this many times")
    parser.add_argument("--secret-file", help="the job secret every node shares (else $DISTDL_JOB_SECRET; "
                        "generated for a single node): nodes prove it to each other, run tokens derive from it")
    parser.add_argument("--checkpoint-dir", help="sets DISTDL_CHECKPOINT_DIR for the workers")
    parser.add_argument("--timeout", type=float, help="seconds a collective may wait for a peer (DISTDL_TIMEOUT)")
    parser.add_argument("--log-dir", help="each rank's full output in LOG_DIR/rank-<r>.log")
    parser.add_argument("--tag-output", action=argparse.BooleanOptionalAction, default=True,
                        help="prefix each line a worker prints with its rank")
    parser.add_argument("--dry-run", action="store_true", help="print what would be started, and the environment")
    parser.add_argument("--check", action="store_true", help="pre-flight: MPI, ZeroMQ rendezvous, nodes agree")
    parser.add_argument("-m", dest="module", help="run a module, as python -m")
    parser.add_argument("script", nargs="?", help="the training script")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    args = parser.parse_args(argv)
    if args.module and args.script:
        args.args = [args.script] + args.args
    if not args.module and not args.script and not args.check:
        parser.error("give a script to run (or -m module)")
    if args.nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        parser.error(f"need -n >= 1, --nnodes >= 1 and 0 <= --node-rank < --nnodes "
                     f"(got {args.nproc}, {args.nnodes}, {args.node_rank})")
    if args.nnodes > 1 and args.master_port == 0:
        parser.error("a multi-node job needs --master-port: every node must know where node 0 listens")
    if args.nnodes > 1 and args.backend == "mpi":
        parser.error("across nodes distdl-run uses ZeroMQ; for MPI across nodes run mpirun with a hostfile")
    return args


def resolve_backend(args):
    """The backend and why: auto is MPI when its runtime works here (single node), else ZeroMQ."""
    if args.nproc * args.nnodes == 1:
        return "local", "a single worker needs no communication"
    if args.backend != "auto":
        return args.backend, "asked for"
    if args.nnodes > 1:
        return "zmq", "several nodes"
    works, why = mpi_works(find_mpiexec())
    return ("mpi", why) if works else ("zmq", f"MPI unavailable ({why})")


def build_spec(args, backend):
    target = ["-m", args.module, *args.args] if args.module else [args.script, *args.args]
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    return JobSpec(nproc=args.nproc, target=target, backend=backend, nnodes=args.nnodes, node_rank=args.node_rank,
                   master_addr=args.master_addr, master_port=args.master_port, max_restarts=args.max_restarts,
                   checkpoint_dir=args.checkpoint_dir, timeout=args.timeout, log_dir=args.log_dir,
                   tag_output=args.tag_output)


def identity(spec):
    """What every node must agree on."""
    script = spec.target[0] if spec.target[0] != "-m" else None
    digest = hashlib.sha256(open(script, "rb").read()).hexdigest() if script and os.path.exists(script) else None
    return {"version": metadata.version("distdl"), "script": digest or " ".join(spec.target[:2]),
            "nproc": spec.nproc, "nnodes": spec.nnodes, "max_restarts": spec.max_restarts}


def dry_run(spec, reason):
    print(f"backend: {spec.backend} ({reason}); world size {spec.world_size}")
    environments = spec.environments(0, "<run id: fresh per job>", spec.master_port or "<free port>")
    command = spec.mpi_command("<output dir>") if spec.backend == "mpi" else spec.worker_command()
    for env in environments:
        who = f"rank {env['DISTDL_RANK']}" if "DISTDL_RANK" in env else f"ranks 0-{spec.nproc - 1} via mpiexec"
        print(f"{who}: {' '.join(map(str, command))}")
        for name in sorted(env):
            if name.startswith("DISTDL_") or name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                print(f"    {name}={env[name]}")
    return 0


def make_link(spec, job_secret):
    """How this node takes part: alone, as node 0 coordinating the others, or following node 0."""
    if spec.nnodes == 1:
        return Solo(spec, job_secret)
    role = Coordinator if spec.node_rank == 0 else Member
    link = role(spec, identity(spec), job_secret, timeout=spec.timeout or 300, say=say)
    try:
        link.join()
    except NodeError:
        link.close()
        raise
    return link


def run(spec, secret_file=None):
    become_subreaper()  # a worker's process whose keeper was killed comes to us, never to init
    try:
        link = make_link(spec, job_secret(spec.nnodes, secret_file))
    except (NodeError, SecretError, OSError) as exc:
        say(f"the nodes could not form the job: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted while the nodes were forming the job; no worker had started")
        return 128 + signal.SIGINT
    return Agent(spec, link).run()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    backend, reason = resolve_backend(args)
    if args.check:
        from launcher.preflight import preflight

        return preflight(args)
    spec = build_spec(args, backend)
    if args.dry_run:
        return dry_run(spec, reason)
    if args.backend == "auto":
        say(f"backend {backend} ({reason})")
    return run(spec, args.secret_file)
