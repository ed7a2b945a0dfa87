"""The gradient allreduce of buckets that live on a device (a GPU, or the simulated device of the tests).

Three paths, chosen once by ``choose`` (``auto``) and said at start:

- ``nccl``: ``cupy.cuda.nccl`` reduces on the GPU. Rank 0's unique id travels
  over the host communicator. NCCL refuses two ranks on one GPU ("Duplicate
  GPU"), so it is chosen only when no two ranks share one.
- ``cuda-aware-mpi``: MPI reads device memory itself, when
  ``MPIX_Query_cuda_support()`` says it can (the pip ``mpich`` cannot).
- ``staging``: through pinned host buffers, over either host communicator. A
  bucket is copied in chunks, so copying chunk k+1 to the host overlaps reducing
  chunk k; each chunk is copied back as soon as it is reduced.

Every bucket runs on the host communicator's thread (``Communicator.submit``), in
index order and in order with every other collective of the rank, after its
stream waited on the gradients' event; its ``reduced_event`` is what the compute
stream waits on before the optimizer reads it. The signature check (first bucket)
and the timeouts stay the host communicator's; NCCL's completion is polled against
the same timeout, and a NCCL communicator that timed out is aborted, never waited on.
"""

import logging
import os
import socket
from functools import partial

import numpy as np

from distdl import _env, backend
from distdl.comm.errors import CollectiveTimeoutError
from distdl.parallel.comm_hooks import run_hook

log = logging.getLogger("distdl.parallel")

METHODS = ("nccl", "cuda-aware-mpi", "staging")
CHUNK_BYTES = 4 << 20  # a staged bucket's chunk, unless DISTDL_STAGING_CHUNK_BYTES says otherwise
NCCL_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES


def choose(answers, backend_name):
    """The path for this job's device buckets from every rank's answers (a pure function).

    ``answers`` holds, per rank, ``(host, gpu, nccl_available, mpi_cuda_aware)``: ``gpu`` names the physical
    device the rank computes on (its PCI bus id), so two ranks on one GPU are seen whatever each one's
    CUDA_VISIBLE_DEVICES numbers it. NCCL needs libnccl on every rank and refuses two ranks on one GPU
    ("Duplicate GPU", since NCCL 2.5); CUDA-aware MPI must be so on every rank. Every rank decides from the
    same gathered answers, so all take the same path.
    """
    gpus = [(host, gpu) for host, gpu, _, _ in answers]
    if all(nccl for _, _, nccl, _ in answers) and len(set(gpus)) == len(gpus):
        return "nccl"
    if backend_name == "mpi" and all(aware for _, _, _, aware in answers):
        return "cuda-aware-mpi"
    return "staging"


def answers_here(comm, dev):
    """This rank's entry of ``choose``'s answers."""
    return [socket.gethostname(), backend.cupy().cuda.runtime.deviceGetPCIBusId(dev.index), nccl_available(),
            bool(comm.cuda_aware)]


def nccl_available():
    """Whether CuPy's NCCL binding imports and finds libnccl."""
    try:
        return backend.nccl() is not None
    except Exception:  # no CuPy, or a binding that fails to load: no NCCL here
        return False


def select(comm, dev, method=None):
    """The path for ``dev``'s buckets on ``comm``: ``method`` if given, else DISTDL_GPU_ALLREDUCE, else ``auto``.

    Off a GPU only staging exists: on the simulated device NCCL is absent, and a CUDA-aware allreduce
    "launched" on its stream would run whenever some thread waits on that stream, out of the ranks' order.
    """
    method = method or os.environ.get("DISTDL_GPU_ALLREDUCE", "auto")
    if method not in ("auto", *METHODS):
        raise ValueError(f"gradient allreduce {method!r}: use 'auto' or one of {', '.join(METHODS)}")
    answers = answers_here(comm, dev) if dev.kind == "cuda" and method == "auto" else None
    everyone = comm.allgather_json([method, dev.kind, answers])  # collective: every rank builds DDP
    if any(theirs[:2] != everyone[0][:2] for theirs in everyone):
        ranks = "; ".join(f"rank {r}: {m} on {kind}" for r, (m, kind, _) in enumerate(everyone))
        raise ValueError(f"the ranks' gradient allreduce paths or devices differ ({ranks}): set DISTDL_GPU_ALLREDUCE "
                         "and DISTDL_DEVICE alike on every rank (or leave them unset)")
    if dev.kind != "cuda":
        if method not in ("auto", "staging"):
            raise ValueError(f"gradient allreduce {method!r} needs a GPU; {dev} buckets take 'staging' (or 'auto'): "
                             "unset DISTDL_GPU_ALLREDUCE or bind the worker to a GPU")
        return "staging"
    if method != "auto":
        return method
    return choose([theirs[2] for theirs in everyone], comm.backend)


def staging_chunk_bytes():
    """DISTDL_STAGING_CHUNK_BYTES, else CHUNK_BYTES: how much of a bucket one staged copy moves."""
    return _env.number("DISTDL_STAGING_CHUNK_BYTES", CHUNK_BYTES, lambda value: value >= 1,
                       f"give a whole number of bytes, at least 1 (e.g. {CHUNK_BYTES} for 4 MiB, the default when it "
                       "is unset)")


def nccl_unique_id(comm, make_id):
    """Rank 0's ``make_id()``, broadcast over the host communicator to every rank, in the form it was made.

    ``cupy.cuda.nccl.get_unique_id`` returns ``bytes`` since CuPy 14 (a tuple of 128 signed ints before), and
    ``NcclCommunicator`` takes only that form; the form travels with the id (its last element: 1 for bytes).
    """
    uid = np.zeros(NCCL_ID_BYTES + 1, np.int64)
    if comm.rank == 0:
        made = make_id()
        as_bytes = isinstance(made, bytes)
        values = np.frombuffer(made, np.uint8) if as_bytes else np.asarray(made, np.int64)
        if values.shape != (NCCL_ID_BYTES,):
            raise ValueError(f"a NCCL unique id has {NCCL_ID_BYTES} bytes, this one {values.size}")
        uid[:NCCL_ID_BYTES], uid[NCCL_ID_BYTES] = values, as_bytes
    comm.broadcast(uid, root=0)
    if uid[NCCL_ID_BYTES]:
        return bytes(uid[:NCCL_ID_BYTES].astype(np.uint8))
    return tuple(int(b) for b in uid[:NCCL_ID_BYTES])


class HostBucket:
    """A bucket's pinned host copy, with the names a communication hook uses (``comm_hooks``)."""

    def __init__(self, bucket, host):
        self._bucket, self.flat = bucket, host
        self.grads, self.control = host[:bucket.grads.size], host[bucket.grads.size:]

    def index(self):
        return self._bucket.index()

    def buffer(self):
        return self.flat

    def parameters(self):
        return self._bucket.parameters()

    def is_last(self):
        return self._bucket.is_last()

    @property
    def nbytes(self):
        return self.flat.nbytes


class DeviceAllreduce:
    """Averages device buckets over ``comm`` by ``method`` (see ``select``), on ``comm``'s communication thread."""

    def __init__(self, comm, dev, method=None, chunk_bytes=None):
        self.comm, self.dev = comm, dev
        self.method = select(comm, dev, method)
        self.chunk_bytes = max(int(chunk_bytes if chunk_bytes is not None else staging_chunk_bytes()), 1)
        self._stream = dev.new_stream()
        self._host = {}  # bucket index -> its pinned host buffer (staging), allocated once
        self._nccl = self._nccl_communicator() if self.method == "nccl" else None
        log.info("distdl: rank %d: gradient allreduce of %s buckets: %s", comm.rank, dev, self.method)

    def submit(self, bucket, ready, check, hook=None, hook_state=None):
        """Average ``bucket`` once ``ready`` (the gradients' event) is reached; the Request of the work.

        When it is done, ``bucket.reduced_event`` is reached once the averaged bucket is in device memory.
        A communication hook runs on the host copy of the bucket (staging), whatever the path.
        """
        return self.comm.submit(partial(self._reduce, bucket, ready, check, hook, hook_state))

    def stop(self):
        if self._nccl is not None:
            self._nccl.destroy()
            self._nccl = None

    def _reduce(self, bucket, ready, check, hook, hook_state):
        self._stream.wait_event(ready)
        if hook is not None or self.method == "staging":
            self._staged(bucket, check, hook, hook_state)
        elif self.method == "nccl":
            self._nccl_allreduce(bucket, check)
        else:
            self._await(self.dev.record_event(self._stream), "the gradients before the CUDA-aware allreduce")
            self.dev.launch(self._stream, self.comm.allreduce, bucket.flat, "mean", check)  # mean's kernel here
        bucket.reduced_event = self.dev.record_event(self._stream)

    # -- staging -------------------------------------------------------------------------------------------------
    def _host_buffer(self, bucket):
        host = self._host.get(bucket.index())
        if host is None:
            host = self._host[bucket.index()] = self.dev.pinned_empty(bucket.flat.shape, bucket.flat.dtype)
        return host

    def _chunks(self, size, itemsize):
        step = max(self.chunk_bytes // itemsize, 1)
        return [slice(start, min(start + step, size)) for start in range(0, max(size, 1), step)]

    def _staged(self, bucket, check, hook, hook_state):
        """Chunk k+1 travels to the host while chunk k is reduced; a hook takes the whole bucket at once."""
        flat, host = bucket.flat, self._host_buffer(bucket)
        parts = [slice(0, flat.size)] if hook is not None else self._chunks(flat.size, flat.itemsize)
        copied = []
        for part in parts:
            self.dev.copy_to_host(flat[part], host[part], self._stream)
            copied.append(self.dev.record_event(self._stream))
        for k, part in enumerate(parts):
            self._await(copied[k], f"bucket {bucket.index()}'s copy to the host")
            if hook is not None:
                run_hook(hook, hook_state, HostBucket(bucket, host))
            else:
                self.comm.allreduce(host[part], "mean", check=check and k == 0)
            self.dev.copy_to_device(host[part], flat[part], self._stream)

    def _await(self, event, what):
        """Wait for a device event no longer than the communicator's timeout (never a bare wait)."""
        try:
            event.wait(what, getattr(self.comm, "timeout", None))
        except TimeoutError as exc:
            raise CollectiveTimeoutError(f"rank {self.comm.rank}: {exc} ({self.dev}), or a peer never joined") from None

    # -- NCCL ------------------------------------------------------------------------------------------------------
    def _nccl_communicator(self):
        nccl = backend.nccl()
        if nccl is None:
            raise RuntimeError("gradient allreduce 'nccl': CuPy finds no NCCL library; pip install nvidia-nccl-cu12 "
                               "(or put libnccl on the library path), or let DISTDL_GPU_ALLREDUCE choose ('auto')")
        uid = nccl_unique_id(self.comm, nccl.get_unique_id)
        with backend.cupy().cuda.Device(self.dev.index):
            return nccl.NcclCommunicator(self.comm.size, uid, self.comm.rank)

    def _nccl_allreduce(self, bucket, check):
        """The bucket's gradients through NCCL; the checked bucket's control elements through the host
        communicator, which compares the ranks' calls (NCCL would hang or mix them)."""
        nccl = backend.nccl()
        part = bucket.flat
        if check:
            self._staged_control(bucket)
            part = bucket.grads
        kinds = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                 np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl.allReduce(part.data.ptr, part.data.ptr, part.size, kinds[part.dtype], nccl.NCCL_AVG,
                             self._stream.raw.ptr)
        try:
            self._await(self.dev.record_event(self._stream), f"NCCL's allreduce of bucket {bucket.index()}")
        except CollectiveTimeoutError:
            self._nccl.abort()  # a stuck NCCL kernel never returns: abort frees the stream, the job then fails
            self._nccl = None
            raise

    def _staged_control(self, bucket):
        size = bucket.grads.size
        host = self._host_buffer(bucket)[size:]
        self.dev.copy_to_host(bucket.control, host, self._stream)
        self._await(self.dev.record_event(self._stream), "the control elements' copy to the host")
        self.comm.allreduce(host, "mean", check=True)
        self.dev.copy_to_device(host, bucket.control, self._stream)
