"""distdl-run [options] script.py [script args] | -m module [args]: run a distdl job on this machine or node."""

import argparse
import hashlib
import os
import signal
import sys
import tempfile
from importlib import metadata

from launcher import hosts, options
from launcher.agent import Agent, Solo, say
from launcher.keeper import become_subreaper
from launcher.nodes import Coordinator, Member, NodeError
from launcher.secret import SecretError, job_secret
from launcher.spec import THREAD_VARIABLES, TORCH_VARIABLES, JobSpec, find_mpiexec, mpi_works


def build_parser():
    parser = argparse.ArgumentParser(
        prog="distdl-run", allow_abbrev=False, description="Start N distdl workers, watch them, stop the job when one fails, "
        "restart it from the newest checkpoint if asked. torchrun's, mpirun's and horovodrun's option names work.")
    parser.add_argument("-n", "-np", "--nproc-per-node", "--nproc_per_node", type=options.workers_value,
                        dest="nproc", help="workers on this node (with -H/--hostfile: in all); a number, or auto "
                        "(the GPUs if any, else the cores), gpu, cpu; default 1")
    parser.add_argument("--nnodes", type=options.nodes_value, default=1, help="nodes, N (or N:N)")
    parser.add_argument("--node-rank", "--node_rank", type=options.non_negative, default=0)
    parser.add_argument("--master-addr", "--master_addr", default=None, help="where node 0 listens (127.0.0.1)")
    parser.add_argument("--master-port", "--master_port", type=options.non_negative, default=None,
                        help="0: a free port (single node only)")
    parser.add_argument("--rdzv-endpoint", "--rdzv_endpoint", type=options.endpoint_value, metavar="HOST:PORT",
                        help="torchrun's name for --master-addr HOST --master-port PORT")
    parser.add_argument("--standalone", action="store_true", help="one node on this machine, a free port (torchrun)")
    parser.add_argument("-H", "--hosts", type=options.hosts_value, help="MPI across hosts, as horovodrun -H "
                        "a:2,b:2: the hosts go to mpiexec's own multi-host launcher (Hydra)")
    parser.add_argument("--hostfile", help="as -H, from a file of 'host slots=N' (or 'host:N') lines")
    parser.add_argument("--backend", choices=["auto", "mpi", "zmq"], default="auto",
                        help="auto: MPI when its runtime works here, else ZeroMQ (always ZeroMQ across nodes)")
    parser.add_argument("--max-restarts", "--max_restarts", type=options.non_negative, default=0,
                        help="restart the whole job (every node) from the newest checkpoint up to this many times")
    parser.add_argument("--secret-file", help="the job secret every node shares (else $DISTDL_JOB_SECRET; "
                        "generated for a single node): nodes prove it to each other, run tokens derive from it")
    parser.add_argument("--checkpoint-dir", help="sets DISTDL_CHECKPOINT_DIR for the workers")
    parser.add_argument("--timeout", type=float, help="seconds a collective may wait for a peer (DISTDL_TIMEOUT)")
    parser.add_argument("--log-dir", "--log_dir", help="each rank's output in LOG_DIR/rank-<r>.log as well as on "
                        "the console: both streams, unless --tee chooses")
    parser.add_argument("--tee", "-t", type=options.tee_value, help="as torchrun's: the streams each rank's log "
                        "file keeps besides the console: 0 none, 1 stdout, 2 stderr, 3 both, or per local rank "
                        "0:3,1:1 (ranks not named: none); without --log-dir, in a new temporary directory")
    parser.add_argument("--local-ranks-filter", "--local_ranks_filter", type=options.ranks_value, metavar="R,R",
                        help="show only these local ranks' output on the console (the log files keep all)")
    parser.add_argument("--tag-output", action=argparse.BooleanOptionalAction, default=True,
                        help="prefix each line a worker prints with its rank")
    parser.add_argument("--dry-run", action="store_true", help="print what would be started, and the environment")
    parser.add_argument("--check", action="store_true", help="pre-flight: MPI, ZeroMQ rendezvous, nodes agree")
    parser.add_argument("--version", action="version", version=f"distdl-run {_version()}")
    parser.add_argument("-m", dest="module", help="run a module, as python -m")
    parser.add_argument("script", nargs="?", help="the training script")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return parser


def _version():
    try:
        return metadata.version("distdl")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def split_at_target(parser, argv):
    """distdl-run's own arguments, and the script (or -m module's arguments) with what follows it.

    Nothing after the script is read as an option of distdl-run, as with torchrun and
    mpirun: a script may have its own ``--timeout`` or ``--log``.
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1:]
        if not token.startswith("-") or token == "-":
            return argv[:i], argv[i:]
        action = parser._option_string_actions.get(token)  # --name=value and -n4 carry their value
        if action is not None and action.dest == "module":
            return argv[:i + 2], argv[i + 2:]
        i += 2 if action is not None and action.nargs != 0 else 1
    return argv, []


def parse_args(argv):
    parser = build_parser()
    own, target = split_at_target(parser, list(argv))
    args = parser.parse_args(own)
    if not args.module:
        args.script, target = (target[0], target[1:]) if target else (None, [])
    args.args = target
    if not args.module and not args.script and not args.check:
        parser.error("give a script to run (or -m module)")
    if args.script and not args.module and not args.dry_run and not os.path.isfile(args.script):
        parser.error(f"no such script: {args.script} (in {os.getcwd()}); no worker was started")
    _placement(parser, args)
    if not args.node_rank < args.nnodes:
        parser.error(f"--node-rank {args.node_rank} is not below --nnodes {args.nnodes}: node ranks are 0 to "
                     f"{args.nnodes - 1}")
    if args.nnodes > 1 and args.master_port == 0:
        parser.error("a multi-node job needs --master-port (or --rdzv-endpoint HOST:PORT): every node must know "
                     "where node 0 listens")
    if args.nnodes > 1 and args.backend == "mpi":
        parser.error("across nodes distdl-run uses ZeroMQ; for MPI across hosts give them with -H or --hostfile")
    return args


def _placement(parser, args):
    """Resolve torchrun's and horovodrun's ways of saying where the workers go into nproc, nnodes, master, hosts."""
    if args.rdzv_endpoint:
        if args.master_addr is not None or args.master_port is not None:
            parser.error("give either --rdzv-endpoint HOST:PORT or --master-addr/--master-port, not both")
        args.master_addr, args.master_port = args.rdzv_endpoint
    if args.standalone and (args.nnodes > 1 or args.rdzv_endpoint or args.master_addr is not None):
        parser.error("--standalone is one node on this machine: it takes no --nnodes, --rdzv-endpoint or "
                     "--master-addr")
    args.master_addr = args.master_addr or "127.0.0.1"
    args.master_port = args.master_port or 0
    if args.hosts and args.hostfile:
        parser.error("give the hosts with -H or with --hostfile, not both")
    if args.hostfile:
        try:
            args.hosts = hosts.read_hostfile(args.hostfile)
        except (OSError, hosts.HostsError) as exc:
            parser.error(f"--hostfile: {exc}")
    if args.hosts:
        if args.nnodes > 1:
            parser.error("-H/--hostfile start every host's workers through mpiexec from here: give no --nnodes")
        if args.backend == "zmq":
            parser.error("-H/--hostfile hand the hosts to mpiexec: they need --backend mpi (or auto)")
        slots = sum(count for _, count in args.hosts)
        args.nproc = args.nproc or slots
    args.nproc = args.nproc or 1


def resolve_backend(args):
    """The backend and why: auto is MPI when its runtime works here (single node), else ZeroMQ."""
    if args.nproc * args.nnodes == 1:
        return "local", "a single worker needs no communication"
    if args.backend != "auto":
        return args.backend, "asked for"
    if args.hosts:
        return "mpi", "-H/--hostfile: mpiexec starts the workers on the hosts"
    if args.nnodes > 1:
        return "zmq", "several nodes"
    works, why = mpi_works(find_mpiexec())
    return ("mpi", why) if works else ("zmq", f"MPI unavailable ({why})")


def build_spec(args, backend):
    target = ["-m", args.module, *args.args] if args.module else [args.script, *args.args]
    if args.tee is not None and not args.log_dir and not args.dry_run:
        args.log_dir = tempfile.mkdtemp(prefix="distdl-logs-")
        say(f"--tee: the workers' log files are in {args.log_dir} (give --log-dir to choose)")
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    return JobSpec(nproc=args.nproc, target=target, backend=backend, nnodes=args.nnodes, node_rank=args.node_rank,
                   master_addr=args.master_addr, master_port=args.master_port, max_restarts=args.max_restarts,
                   checkpoint_dir=args.checkpoint_dir, timeout=args.timeout, log_dir=args.log_dir, tee=args.tee,
                   tag_output=args.tag_output, hosts=hosts.hydra_hosts(args.hosts) if args.hosts else None,
                   shown_local_ranks=args.local_ranks_filter, live=sys.stdout.isatty())


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
            if name.startswith("DISTDL_") or name in THREAD_VARIABLES or name in TORCH_VARIABLES:
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
