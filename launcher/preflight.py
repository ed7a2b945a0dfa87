"""distdl-run --check: can this machine run a job? MPI runtime, a ZeroMQ rendezvous, and (across nodes) agreement."""

import subprocess
import sys

from launcher.nodes import Coordinator, Member, NodeError
from launcher.secret import SecretError, job_secret
from launcher.spec import JobSpec, find_mpiexec, mpi_works, new_run_id, reserve_port

PROBE = ("import numpy as np, distdl as dl; c = dl.init('zmq'); x = np.ones(3); c.allreduce(x); "
         "assert x[0] == c.size; dl.shutdown()")


def zmq_works(host, timeout=60):
    """Two workers on this node find each other over ZeroMQ and reduce an array."""
    spec = JobSpec(nproc=2, target=["-c", PROBE], backend="zmq", master_addr=host)
    listener = reserve_port(host)
    environments = spec.environments(0, new_run_id(), listener.getsockname()[1], listener.fileno())
    workers = []
    for env in environments:
        fds = (listener.fileno(),) if "DISTDL_MASTER_FD" in env else ()
        workers.append(subprocess.Popen(spec.worker_command(), env=env, pass_fds=fds, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    listener.close()
    try:
        outputs = [w.communicate(timeout=timeout)[0] for w in workers]
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
        return False, f"the two workers did not finish within {timeout} s"
    if any(w.returncode for w in workers):
        return False, "; ".join(o.strip().splitlines()[-1] for o in outputs if o.strip())
    return True, f"2 workers met at {host} and reduced an array"


def nodes_agree(args):
    """Node 0 admits every other node (each proves the job secret, the identities match), then ends the check."""
    from launcher.agent import say
    from launcher.cli import identity

    spec = JobSpec(nproc=args.nproc, target=[args.script or ""], nnodes=args.nnodes, node_rank=args.node_rank,
                   master_addr=args.master_addr, master_port=args.master_port, max_restarts=args.max_restarts)
    try:
        role = Coordinator if args.node_rank == 0 else Member
        link = role(spec, identity(spec), job_secret(args.nnodes, args.secret_file), args.timeout or 60, say)
    except (SecretError, OSError) as exc:
        return False, str(exc)
    try:
        link.join()
        if args.node_rank == 0:
            link.decide(0, None)
        elif link.plan(0) is not None or not link.succeeded():
            return False, "node 0 did not end the check"
        return True, f"{args.nnodes} nodes"
    except NodeError as exc:
        return False, str(exc)
    finally:
        link.close()


def preflight(args):
    checks = [("MPI runtime", *mpi_works(find_mpiexec())), ("ZeroMQ rendezvous", *zmq_works(args.master_addr))]
    if args.nnodes > 1:
        checks.append(("nodes agree (job secret, distdl version, script, options)", *nodes_agree(args)))
    for name, ok, detail in checks:
        print(f"[{'ok' if ok else 'FAILED'}] {name}: {detail}")
    mpi_ok, zmq_ok = checks[0][1], checks[1][1]
    if not zmq_ok or not all(ok for _, ok, _ in checks[2:]):
        return 1
    print(f"distdl-run will use {'MPI' if mpi_ok else 'ZeroMQ'} with --backend auto" + ("" if mpi_ok else
          " (the MPI runtime does not work here)"))
    sys.stdout.flush()
    return 0
