"""BLAS and OpenMP threads limited to this rank's share of the cores, under any launcher.

NumPy's BLAS starts a thread per core in every process: two ranks on two cores
then run four busy threads and each step waits on the other's. distdl-run sets
OMP_NUM_THREADS and its kin before the workers start; under mpiexec or srun
nothing does, so ``dl.init()`` limits the pools already loaded, through
threadpoolctl, unless the user set one of those variables.
"""

import logging
import os

log = logging.getLogger("distdl.comm")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
_limited = []  # the threadpoolctl limiter, kept so the limit lasts as long as the process


def cores_per_rank(local_size):
    """This rank's share of the cores it may run on: all of them where a launcher bound it to a few already."""
    allowed = len(os.sched_getaffinity(0))
    if allowed < (os.cpu_count() or allowed):  # bound (mpiexec -bind-to, srun --cpu-bind): the binding is the share
        return allowed
    return max(1, allowed // max(local_size, 1))


def limit_threads(local_size):
    """Limit every BLAS and OpenMP pool to the cores per local rank, unless the user chose; the limit, or None."""
    chosen = [name for name in THREAD_VARIABLES if os.environ.get(name)]
    if chosen or local_size <= 1 or _limited:
        return None
    from threadpoolctl import threadpool_limits

    threads = cores_per_rank(local_size)
    _limited.append(threadpool_limits(limits=threads))
    log.info("distdl: BLAS and OpenMP limited to %d thread%s per rank (%d ranks share this host's %d cores); "
             "set OMP_NUM_THREADS to choose", threads, "" if threads == 1 else "s", local_size,
             len(os.sched_getaffinity(0)))
    return threads
