"""The one interface every backend implements: collectives on contiguous arrays, with their argument checks.

Collectives work in place on the caller's array where the result has its shape
(allreduce, broadcast) and return new arrays otherwise (allgather, gather,
reduce_scatter). Metadata travels as JSON, never as pickles.

``iallreduce`` runs on the communication thread (``ordering.CommThread``); a
blocking collective first waits for the non-blocking ones issued before it, so
every rank sees the same sequence of calls.
"""

import functools
import json

import numpy as np

from distdl import device
from distdl.backend import device_of, is_gpu_array, to_device
from distdl.comm.errors import CollectiveMismatchError, DistError
from distdl.comm.ordering import CommThread
from distdl.comm.signature import OP_CODES, REDUCE_OPS, SUPPORTED_DTYPES

_SUPPORTED = frozenset(SUPPORTED_DTYPES)  # dtype lookups by hash: the checks run on every collective


class Communicator:
    """A fixed group of ``size`` processes; this one is ``rank``.

    Backends implement the underscored collectives; this class checks arguments,
    keeps the order, and runs ``iallreduce`` on a communication thread.
    """

    backend = None
    cuda_aware = False  # whether the backend moves device (CuPy) arrays itself; else they are staged through the host

    def __init__(self, rank=0, size=1, local_rank=0, local_size=1):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self._calls = CommThread(rank)  # runs iallreduce; its first failure leaves the communicator unusable
        self._closed = False
        self._on_close = []

    # -- collectives ---------------------------------------------------------------------------------------------
    def allreduce(self, array, op="sum", check=True):
        """Reduce ``array`` over every rank, in place; ``check=False`` skips the cross-rank signature check."""
        # the checks inlined for the common case: this call's overhead is the latency of small allreduces
        if type(array) is not np.ndarray or array.dtype not in _SUPPORTED or not array.flags.c_contiguous:
            check_array(array, "allreduce")
            if self._staged(array):
                return _set(array, self.allreduce(array.get(), op, check))
        if op not in OP_CODES:
            check_op(op, "allreduce")
        calls = self._calls
        if calls.pending or self._closed or calls.failure is not None:
            self._before_collective()
        try:
            self._allreduce(array, op, check)
        except BaseException as exc:
            self._fail(exc)
            raise
        return array

    def iallreduce(self, array, op="sum", check=True):
        """Start ``allreduce`` in the background; the array must not be touched until ``wait()`` returns."""
        check_array(array, "iallreduce")
        check_op(op, "iallreduce")
        if self._staged(array):
            raise TypeError(f"iallreduce on {self.backend} takes host (NumPy) arrays, not a {device_of(array)} array: "
                            "use allreduce (it stages through the host) or DistributedDataParallel (its device "
                            "allreduce overlaps the copies)")
        self._check_usable()
        return self._calls.submit(functools.partial(self._allreduce, array, op, check))

    def submit(self, run):
        """Run ``run()``, which may call this communicator's collectives, on the communication thread; its Request.

        It takes its place in the one order of this communicator's calls: a collective called later, from any
        thread, waits for it. Work with collectives of its own (a communication hook, a device bucket's
        allreduce) goes through here, never through a thread of its own, so that every rank issues those
        collectives and the caller's (SyncBatchNorm's, in the same backward) in the same order.
        """
        self._check_usable()
        return self._calls.submit(run)

    def broadcast(self, array, root=0):
        check_array(array, "broadcast")
        check_root(root, self.size, "broadcast")
        if self._staged(array):
            return _set(array, self.broadcast(array.get(), root))
        self._before_collective()
        self._run(self._broadcast, array, root)
        return array

    def allgather(self, array):
        """Every rank's ``array`` stacked along a new first axis, in rank order (same shape on every rank)."""
        check_array(array, "allgather")
        if self._staged(array):
            return to_device(self.allgather(array.get()), device_of(array))
        self._before_collective()
        return self._run(self._allgather, array)

    def gather(self, array, root=0):
        """Like allgather, but only ``root`` gets the stack; the others get None."""
        check_array(array, "gather")
        check_root(root, self.size, "gather")
        if self._staged(array):
            out = self.gather(array.get(), root)
            return None if out is None else to_device(out, device_of(array))
        self._before_collective()
        return self._run(self._gather, array, root)

    def reduce_scatter(self, array, op="sum"):
        """Part ``rank`` of the reduced array: the flattened array is cut in ``size`` near-equal parts."""
        check_array(array, "reduce_scatter")
        check_op(op, "reduce_scatter")
        if self._staged(array):
            return to_device(self.reduce_scatter(array.get(), op), device_of(array))
        self._before_collective()
        return self._run(self._reduce_scatter, array, op)

    def barrier(self):
        self._before_collective()
        self._run(self._barrier)

    def broadcast_json(self, value, root=0):
        """Root's JSON-serialisable ``value`` on every rank."""
        check_root(root, self.size, "broadcast_json")
        data = np.frombuffer(json.dumps(value).encode(), np.uint8).copy() if self.rank == root else None
        length = self.broadcast(np.array([0 if data is None else len(data)], np.int64), root)
        if data is None:
            data = np.empty(int(length[0]), np.uint8)
        self._before_collective()
        self._run(self._broadcast, data, root)
        return json.loads(data.tobytes().decode())

    def allgather_ragged(self, array):
        """Every rank's ``array`` in rank order, as a list; their lengths along axis 0 may differ.

        The dtype and the shape beyond axis 0 must be the same on every rank.
        """
        check_array(array, "allgather_ragged")
        if array.ndim == 0:
            raise ValueError("allgather_ragged needs an array of at least one dimension; pass array.reshape(1)")
        return self._allgather_ragged(array)

    def allgather_json(self, value):
        """The list of every rank's JSON-serialisable ``value``, in rank order."""
        payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
        return [json.loads(row.tobytes().decode()) for row in self._allgather_ragged(payload)]

    def _allgather_ragged(self, array):
        """``allgather_ragged`` without the dtype check (JSON travels as uint8): pad to the longest, cut back."""
        lengths = self.allgather(np.array([len(array)], np.int64))[:, 0]
        padded = np.zeros((int(lengths.max()),) + array.shape[1:], array.dtype)
        padded[:len(array)] = array
        self._before_collective()
        rows = self._run(self._allgather, padded)
        return [row[:n] for row, n in zip(rows, lengths)]

    def _staged(self, array):
        """Whether ``array`` is device memory this backend cannot move: it then travels through a host copy
        (``.get()`` and ``.set()`` wait for the current stream, so no kernel is still writing it).

        A CUDA-aware backend reads device memory itself, and knows nothing of streams: the current stream
        is synchronized here first, so the kernels that write ``array`` are done before MPI reads it.
        """
        if not is_gpu_array(array):
            return False
        if self.cuda_aware:
            on = device.of(array)
            on.record_event(on.compute_stream()).wait(f"rank {self.rank}: the kernels writing a CUDA-aware "
                                                      "collective's array")
            return False
        return True

    # -- order and failure -----------------------------------------------------------------------------------------
    @property
    def _failure(self):
        """The exception of the first collective that failed, else None: the communicator is unusable then."""
        return self._calls.failure

    def _fail(self, exc):
        if self._calls.failure is None:
            self._calls.failure = exc

    def _run(self, collective, *args):
        """Run a backend's collective; its failure (the peers' state is unknown then) ends the communicator."""
        try:
            return collective(*args)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _check_usable(self):
        if self._closed:
            raise DistError(f"rank {self.rank}: the {self.backend} communicator is closed")
        if self._failure is not None:
            raise DistError(f"rank {self.rank}: an earlier collective failed ({self._failure}); "
                            "the communicator cannot be used any more") from self._failure

    def _before_collective(self):
        """Wait for the non-blocking collectives issued before this one: every rank keeps one order."""
        if self._closed or self._failure is not None:
            self._check_usable()
        if self._calls.pending and not self._calls.is_current():  # on the thread itself: the earlier ones are done
            self._calls.wait_pending()

    def on_close(self, callback):
        """Call ``callback()`` when this communicator closes in good order, before its closing barrier.

        Every rank closes alike, so the callback may run collectives: the timeline is gathered there.
        """
        self._on_close.append(callback)

    def close(self):
        """Finish pending collectives, meet every rank in a checked barrier, release the backend's resources.

        A rank still inside another collective fails with a mismatch naming both calls, and so does
        this one: the barrier's failure is raised (after the release), never swallowed. After a
        failed collective there is no barrier: the peers learn it from their own errors.
        """
        if self._closed:
            return
        try:
            if self._failure is None:
                self._before_collective()
                self._closing_barrier()
        finally:
            self._calls.stop()
            self._closed = True
            self._release()

    def _closing_barrier(self):
        """The ``on_close`` callbacks, then the barrier; a mismatch in either says that this rank is closing."""
        try:
            for callback in self._on_close:
                callback()
            if self.size > 1:
                self._run(self._barrier)
        except CollectiveMismatchError as exc:
            raise CollectiveMismatchError(
                f"rank {self.rank} is closing its communicator (dl.shutdown(), or the end of the script) while "
                "another rank is still in a collective: a rank ended its loop early (for uneven inputs use "
                f"`with ddp.join():`), left by sys.exit, or only some ranks made a call. {exc}") from exc

    def abandon(self, reason):
        """Close at once, without the barrier: this process is ending on an error (its peers will see it go)."""
        self._fail(DistError(f"rank {self.rank}: {reason}"))
        self.close()

    def _release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"

    # -- what a backend implements ---------------------------------------------------------------------------------
    def _allreduce(self, array, op, check):
        raise NotImplementedError

    def _broadcast(self, array, root):
        raise NotImplementedError

    def _allgather(self, array):
        raise NotImplementedError

    def _gather(self, array, root):
        raise NotImplementedError

    def _reduce_scatter(self, array, op):
        raise NotImplementedError

    def _barrier(self):
        raise NotImplementedError


def _set(array, host):
    """Copy the host result of a staged collective back into the caller's device array."""
    array.set(host)
    return array


def check_array(array, collective):
    """Reject what no backend can move: a non-array, a dtype off the list, a non-contiguous view."""
    if type(array) is not np.ndarray and not (hasattr(array, "dtype") and hasattr(array, "shape")):
        raise TypeError(f"{collective} takes an array, got {type(array).__name__}")
    if array.dtype not in _SUPPORTED:
        names = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise TypeError(f"{collective} does not support dtype {array.dtype}: use one of {names}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{collective} needs a C-contiguous array; pass np.ascontiguousarray(array)")


def check_op(op, collective):
    if op not in OP_CODES:
        raise ValueError(f"{collective}: unknown op {op!r}, expected one of {', '.join(REDUCE_OPS)}")


def check_root(root, size, collective):
    if not 0 <= root < size:
        raise ValueError(f"{collective}: root {root} is not a rank of this world of {size}")

