"""The one interface every backend implements: collectives on contiguous arrays.

Collectives work in place on the caller's array where the result has its shape
(allreduce, broadcast) and return new arrays otherwise (allgather, gather,
reduce_scatter). Metadata travels as JSON, never as pickles.

``iallreduce`` runs the collective on a communication thread, so it progresses
while the caller computes (MPI libraries often make no progress in the background
otherwise). Collectives run one at a time and in the order they were called: a
blocking collective first waits for the non-blocking ones issued before it, so
every rank sees the same sequence.
"""

import json
import queue
import threading
import time

import numpy as np

from distdl.comm.errors import DistError

REDUCE_OPS = ("sum", "mean", "max", "min", "prod")
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64))
_SUPPORTED = frozenset(SUPPORTED_DTYPES)  # dtype lookups by hash: the checks run on every collective
# Small integer codes of collectives, ops and dtypes: what a signature check compares across ranks.
COLLECTIVES = ("allreduce", "broadcast", "allgather", "gather", "reduce_scatter", "barrier", "json")
OP_CODES = {op: i for i, op in enumerate(REDUCE_OPS)}
DTYPE_CODES = {dtype: i for i, dtype in enumerate(SUPPORTED_DTYPES + (np.dtype(np.uint8),))}  # uint8: JSON bytes
FLOAT16_MAX = 60000.0  # a little under float16's largest finite value, 65504
UFUNCS = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def describe(collective, op=None, dtype=None, count=None, seq=None):
    """'allreduce #12 (sum, float32, 1000 elements)': how errors name a call."""
    details = [str(x) for x in (op, dtype) if x is not None]
    if count is not None:
        details.append(f"{count} elements")
    numbered = collective if seq is None else f"{collective} #{seq}"
    return f"{numbered} ({', '.join(details)})" if details else numbered


def finish_mean(array, size):
    """Turn a sum into the mean in place; integer means round down, as floor division does."""
    if array.dtype.kind == "f":
        array /= array.dtype.type(size)
    else:
        np.floor_divide(array, size, out=array)


class Request:
    """The handle of a non-blocking collective: ``wait()`` until it is done, ``done()`` to ask."""

    def __init__(self):
        self._event = threading.Event()
        self._error = None
        self.started_at = time.time()  # wall-clock stamps, for timelines
        self.finished_at = None

    def _finish(self, error=None):
        self._error = error
        self.finished_at = time.time()
        self._event.set()

    def done(self):
        return self._event.is_set()

    def wait(self):
        self._event.wait()
        if self._error is not None:
            raise self._error


class CompletedRequest(Request):
    """The handle of a collective that finished before it was returned."""

    def __init__(self):
        super().__init__()
        self._finish()


class Communicator:
    """A fixed group of ``size`` processes; this one is ``rank``.

    Backends implement the underscored collectives; this class checks arguments,
    keeps the order, and runs ``iallreduce`` on a communication thread.
    """

    backend = None

    def __init__(self, rank=0, size=1, local_rank=0, local_size=1):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self._jobs = None  # the communication thread's queue, once it runs
        self._thread = None
        self._pending = []
        self._failure = None  # a collective that failed leaves the communicator unusable
        self._closed = False

    # -- collectives ---------------------------------------------------------------------------------------------
    def allreduce(self, array, op="sum", check=True):
        """Reduce ``array`` over every rank, in place; ``check=False`` skips the cross-rank signature check."""
        # the checks inlined for the common case: this call's overhead is the latency of small allreduces
        if type(array) is not np.ndarray or array.dtype not in _SUPPORTED or not array.flags.c_contiguous:
            check_array(array, "allreduce")
        if op not in OP_CODES:
            check_op(op, "allreduce")
        if self._pending or self._closed or self._failure is not None:
            self._before_collective()
        self._allreduce(array, op, check)
        return array

    def iallreduce(self, array, op="sum", check=True, compression=None):
        """Start ``allreduce`` in the background; the array must not be touched until ``wait()`` returns.

        ``compression="fp16"`` (sum and mean of float32/float64 only) sends float16: the
        ranks agree on a power-of-two scale that brings the largest |value| x world
        size close to float16's maximum, so that small values do not underflow and the
        sum cannot overflow; the result is unscaled back into ``array``'s dtype.
        """
        check_array(array, "iallreduce")
        check_op(op, "iallreduce")
        if compression not in (None, "fp16"):
            raise ValueError(f"unknown compression {compression!r}: use None or 'fp16'")
        if compression and (op not in ("sum", "mean") or array.dtype.kind != "f"):
            raise ValueError(f"fp16 compression reduces float arrays by sum or mean, not {op} of {array.dtype}")
        self._check_usable()
        request = Request()
        if self._thread is None:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, name=f"distdl-comm-{self.rank}", daemon=True)
            self._thread.start()
        self._pending.append(request)
        self._jobs.put((request, array, op, check, compression))
        return request

    def broadcast(self, array, root=0):
        check_array(array, "broadcast")
        check_root(root, self.size, "broadcast")
        self._before_collective()
        self._broadcast(array, root)
        return array

    def allgather(self, array):
        """Every rank's ``array`` stacked along a new first axis, in rank order (same shape on every rank)."""
        check_array(array, "allgather")
        self._before_collective()
        return self._allgather(array)

    def gather(self, array, root=0):
        """Like allgather, but only ``root`` gets the stack; the others get None."""
        check_array(array, "gather")
        check_root(root, self.size, "gather")
        self._before_collective()
        return self._gather(array, root)

    def reduce_scatter(self, array, op="sum"):
        """Part ``rank`` of the reduced array: the flattened array is cut in ``size`` near-equal parts."""
        check_array(array, "reduce_scatter")
        check_op(op, "reduce_scatter")
        self._before_collective()
        return self._reduce_scatter(array, op)

    def barrier(self):
        self._before_collective()
        self._barrier()

    def broadcast_json(self, value, root=0):
        """Root's JSON-serialisable ``value`` on every rank."""
        check_root(root, self.size, "broadcast_json")
        data = np.frombuffer(json.dumps(value).encode(), np.uint8).copy() if self.rank == root else None
        length = self.broadcast(np.array([0 if data is None else len(data)], np.int64), root)
        if data is None:
            data = np.empty(int(length[0]), np.uint8)
        self._before_collective()
        self._broadcast(data, root)
        return json.loads(data.tobytes().decode())

    def allgather_json(self, value):
        """The list of every rank's JSON-serialisable ``value``, in rank order."""
        payload = json.dumps(value).encode()
        lengths = self.allgather(np.array([len(payload)], np.int64))[:, 0]
        padded = np.zeros(int(lengths.max()), np.uint8)
        padded[:len(payload)] = np.frombuffer(payload, np.uint8)
        self._before_collective()
        rows = self._allgather(padded)
        return [json.loads(row[:n].tobytes().decode()) for row, n in zip(rows, lengths)]

    # -- order and the communication thread ------------------------------------------------------------------------
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
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for request in pending:
            request.wait()

    def _serve(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, array, op, check, compression = job
            if self._failure is not None:
                request._finish(DistError(f"rank {self.rank}: not started, an earlier collective failed"))
                continue
            try:
                if compression:
                    self._allreduce_fp16(array, op, check)
                else:
                    self._allreduce(array, op, check)
                request._finish()
            except BaseException as exc:  # handed to whoever waits on the request
                self._failure = exc
                request._finish(exc)

    def _allreduce_fp16(self, array, op, check):
        largest = np.array([float(np.abs(array).max()) if array.size else 0.0])
        self._allreduce(largest, "max", check=False)
        headroom = FLOAT16_MAX / (largest[0] * self.size) if largest[0] > 0 else 1.0
        scale = 2.0 ** np.floor(np.log2(headroom)) if np.isfinite(headroom) else 1.0
        wire = (array * scale).astype(np.float16)
        self._allreduce(wire, "sum", check)
        np.multiply(wire, 1 / (scale * (self.size if op == "mean" else 1)), out=array, dtype=array.dtype)

    def close(self):
        """Finish pending collectives, stop the communication thread, release the backend's resources."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self._before_collective()
        finally:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
            self._closed = True
            self._release()

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


def split_counts(count, parts):
    """Element counts of ``count`` cut into ``parts`` near-equal parts (the first ones one larger)."""
    base, extra = divmod(count, parts)
    return [base + (i < extra) for i in range(parts)]
