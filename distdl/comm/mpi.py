"""Collectives over MPI (mpi4py): buffer-based, in place, on distdl's own duplicate of COMM_WORLD.

Before each collective (unless ``check=False``) the ranks exchange its signature
(sequence number, collective, op, dtype, count, root) in one small allgather:
ranks that call different collectives get a CollectiveMismatchError naming every
rank's call instead of a hang or garbage. DDP checks the first bucket of each step
and runs the others unchecked.

Every wait is bounded: the data moves by MPI's non-blocking collectives (Iallreduce,
Ibcast, ...) polled against the deadline (DISTDL_TIMEOUT), so a rank that never
arrives (dead, stopped, or in a loop of its own) gives a CollectiveTimeoutError
naming the call; uncaught, it ends the job through MPI_Abort.
"""

import ctypes
import os
import sys
import time

import numpy as np

from distdl.comm.base import Communicator
from distdl.comm.errors import CollectiveTimeoutError
from distdl.comm.reduction import finish_mean, split_counts
from distdl.comm.signature import check_agreed, describe, signature

SPIN_SECONDS = 1e-4  # poll without yielding this long: a late peer is usually only a few microseconds late
PATIENT_SECONDS = 1.0  # a small call waiting longer than this sleeps between polls: its peer is late
SMALL_BYTES = 1 << 20  # (a large one keeps polling: a poll is what moves MPI's data, and it may just be long)
ABORT_DELAY_SECONDS = 0.3  # before MPI_Abort, so that mpiexec has forwarded the traceback


def mpi():
    from mpi4py import MPI

    return MPI


class MPICommunicator(Communicator):
    backend = "mpi"

    def __init__(self, timeout=300.0):
        MPI = mpi()
        self._comm = MPI.COMM_WORLD.Dup()  # our traffic never meets the user's own MPI messages
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        super().__init__(self._comm.Get_rank(), self._comm.Get_size(), local.Get_rank(), local.Get_size())
        local.Free()
        self.timeout = float(timeout)
        self.cuda_aware = cuda_support()  # else CuPy arrays are staged through the host (base.Communicator)
        self._seq = 0
        self._ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}
        self._in_place = MPI.IN_PLACE
        try:  # MPICH reduces float16 natively (MPIX_C_FLOAT16); other MPIs may not
            MPI.Datatype.fromcode("e")
            self._native_half = True
        except ValueError:
            self._native_half = False

    # -- the signature check -----------------------------------------------------------------------------------------
    def _agree(self, collective, op=None, array=None, root=-1):
        """Bump the sequence number and verify that every rank makes the same call."""
        self._seq += 1
        mine = np.array(signature(self._seq, collective, op, array, root), np.int64)
        everyone = np.empty((self.size, len(mine)), np.int64)
        self._wait(self._comm.Iallgather(mine, everyone), collective, op, array)
        check_agreed(self.rank, everyone, mine)

    def _wait(self, request, collective, op, array):
        """Wait for an MPI request, no longer than the timeout.

        MPI moves a non-blocking collective's data only inside calls such as Test, so
        the wait polls: it spins, then yields the processor (to a peer that shares it, as
        MPICH's own blocking calls do) and the interpreter between polls; a small call (a
        signature, a barrier) still waiting after a second sleeps a millisecond between
        them instead.
        """
        start = time.monotonic()
        patient = array is None or array.nbytes < SMALL_BYTES
        while not request.Test():
            elapsed = time.monotonic() - start
            if elapsed > self.timeout:
                what = describe(collective, op, array.dtype if array is not None else None,
                                array.size if array is not None else None, self._seq)
                raise CollectiveTimeoutError(
                    f"rank {self.rank}: {what} waited {self.timeout:g} s for the other ranks; MPI does not say "
                    "which rank is missing: check that every rank is alive and calls the same collectives")
            if elapsed > SPIN_SECONDS:
                if patient and elapsed > PATIENT_SECONDS:
                    time.sleep(1e-3)
                else:
                    os.sched_yield()

    # -- collectives -------------------------------------------------------------------------------------------------
    def _allreduce(self, array, op, check):
        if check:
            self._agree("allreduce", op, array)
        else:
            self._seq += 1
        if array.itemsize == 2 and not self._native_half:  # float16 (the only 2-byte dtype), reduced in float32
            wide = array.astype(np.float32)
            self._wait(self._comm.Iallreduce(self._in_place, wide, op=self._ops[op]), "allreduce", op, array)
            array[...] = wide
        elif array.size:
            self._wait(self._comm.Iallreduce(self._in_place, array, op=self._ops[op]), "allreduce", op, array)
        if op == "mean":
            finish_mean(array, self.size)

    def _broadcast(self, array, root):
        self._agree("broadcast", None, array, root)
        if array.size:
            self._wait(self._comm.Ibcast(array, root=root), "broadcast", None, array)

    def _allgather(self, array):
        self._agree("allgather", None, array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        if array.size:
            self._wait(self._comm.Iallgather(array, out), "allgather", None, array)
        return out

    def _gather(self, array, root):
        self._agree("gather", None, array, root)
        out = np.empty((self.size,) + array.shape, array.dtype) if self.rank == root else None
        if array.size:
            self._wait(self._comm.Igather(array, out, root=root), "gather", None, array)
        return out

    def _reduce_scatter(self, array, op):
        self._agree("reduce_scatter", op, array)
        counts = split_counts(array.size, self.size)
        wide = array.dtype == np.float16 and not self._native_half
        source = array.reshape(-1).astype(np.float32) if wide else array.reshape(-1)
        out = np.empty(counts[self.rank], source.dtype)
        if array.size:
            self._wait(self._comm.Ireduce_scatter(source, out, recvcounts=counts, op=self._ops[op]), "reduce_scatter",
                       op, array)
        if op == "mean":
            finish_mean(out, self.size)
        return out.astype(array.dtype, copy=False)

    def _barrier(self):
        self._agree("barrier")
        self._wait(self._comm.Ibarrier(), "barrier", None, None)

    def _release(self):
        self._comm.Free()


def cuda_support():
    """``MPIX_Query_cuda_support()`` (an MPICH and Open MPI extension that mpi4py does not wrap): whether this
    MPI reads and writes device memory itself. False where the library lacks it; the pip ``mpich`` says 0."""
    try:
        query = ctypes.CDLL(mpi().__file__).MPIX_Query_cuda_support
    except (ImportError, OSError, AttributeError):
        return False
    return bool(query())


def abort_on_uncaught_exception():
    """Make an uncaught exception in one worker end every worker (MPI_Abort), instead of leaving them waiting."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_DELAY_SECONDS)  # mpiexec forwards output asynchronously
        mpi().COMM_WORLD.Abort(1)

    sys.excepthook = hook
