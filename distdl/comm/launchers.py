"""Which launcher started this process and how many processes it announced, so ``dl.init()`` never makes a silent
world of one: it joins them, or raises saying what to do.

Slurm's srun with PMI (``--mpi=pmi2``/``pmix``) is an MPI launch like mpiexec. Without
PMI, the ranks meet by the ZeroMQ rendezvous: rank 0 listens on the first host of
the step at a port derived from the job and step ids, and the run token is
DISTDL_RUN_ID or, derived from the job id, DISTDL_JOB_SECRET (one secret shared by the job's processes).
"""

import hashlib
import hmac
import os
import re

SLURM_PORTS = (20000, 40000)  # the rendezvous port lies in [20000, 60000)
# (launcher, the variable that gives the world size, the one that gives the rank)
ANNOUNCERS = (("distdl-run", "DISTDL_WORLD_SIZE", "DISTDL_RANK"), ("MPICH's Hydra (PMI)", "PMI_SIZE", "PMI_RANK"),
              ("Open MPI's mpirun", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
              ("Slurm's srun", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"), ("torchrun", "WORLD_SIZE", "RANK"))


def announced():
    """(launcher, size, the variable that says so) for the first known launcher that announces several processes."""
    for launcher, size, rank in ANNOUNCERS:
        value = os.environ.get(size, "")
        if value.isdigit() and int(value) > 1 and (launcher == "distdl-run" or rank in os.environ):
            return launcher, int(value), size
    return None


def slurm_step_size():
    """The tasks of this srun step when it has several (and no PMI: MPI launches are told apart first), else 0."""
    size = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    return int(size) if size.isdigit() and int(size) > 1 and "SLURM_PROCID" in os.environ else 0


def slurm_step():
    """srun's rank, size and rendezvous for a step of several tasks; None outside such a step."""
    size = str(slurm_step_size())
    if size == "0":
        return None
    job, step = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_STEP_ID", "0")
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not job.isdigit() or not nodes:
        raise RuntimeError("srun started this process as one of several (SLURM_STEP_NUM_TASKS is set) but "
                           "SLURM_JOB_ID or SLURM_JOB_NODELIST is missing: run it under srun as it is, or start "
                           "the ranks with MPI (srun --mpi=pmi2) or distdl-run")
    return {"rank": int(os.environ["SLURM_PROCID"]), "size": int(size), "master_addr": first_host(nodes),
            "master_port": slurm_port(job, step), "run_id": _slurm_token(job, step)}


def slurm_port(job, step):
    """Rank 0's rendezvous port for a step: the same on every task, different for the job's other steps."""
    digest = hashlib.sha256(f"distdl slurm rendezvous {job}.{step}".encode()).digest()
    return SLURM_PORTS[0] + int.from_bytes(digest[:4], "big") % SLURM_PORTS[1]


def _slurm_token(job, step):
    if os.environ.get("DISTDL_RUN_ID"):
        return os.environ["DISTDL_RUN_ID"]
    secret = os.environ.get("DISTDL_JOB_SECRET", "")
    if len(secret) < 16:
        raise RuntimeError(
            f"srun started this process as one of {os.environ['SLURM_STEP_NUM_TASKS']} without PMI, so distdl's "
            "ranks meet by the ZeroMQ rendezvous, which needs a run token no stranger knows: export "
            "DISTDL_JOB_SECRET (16 characters or more, the same for the whole job, e.g. "
            "`export DISTDL_JOB_SECRET=$(openssl rand -hex 16)` before srun) or DISTDL_RUN_ID; "
            "or launch through MPI with srun --mpi=pmi2")
    return hmac.new(secret.encode(), f"slurm|{job}|{step}".encode(), hashlib.sha256).hexdigest()


def first_host(nodelist):
    """The first host of a Slurm node list: ``node[07-09,12],gpu3`` -> ``node07``."""
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist.strip())
    if not match:
        raise RuntimeError(f"cannot read the Slurm node list {nodelist!r}")
    return match.group(1) + (match.group(2) or "")
