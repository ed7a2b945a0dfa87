"""The device layer: where arrays live, and the streams and events that order work on them.

Three devices share one small interface, so the code that moves gradients
between a device and the network is written once:

- ``cpu``: the host, NumPy. Everything is synchronous; events are always done.
- ``sim``: a simulated asynchronous device on NumPy, a test instrument. Copies
  and kernels launched on a stream are queued and take effect only when an
  event recorded after them is synchronized (or a stream that waited on such an
  event runs), so code that forgets a wait reads stale data in a CPU test,
  as it would read garbage on a GPU. Its compute stream is the host's program
  order: engine ops run at once, and ``compute_stream().wait_event(e)`` makes
  e's work happen at once.
- ``cuda`` / ``cuda:N``: a GPU through CuPy (streams, events, pinned host memory).

CuPy itself is imported only by ``backend.py`` (lazily): the CUDA device reaches
its streams, events and pinned memory through ``backend.cupy()``. CuPy's current device and stream are per thread, so every
thread distdl starts calls ``thread_init()`` first. ``DISTDL_DEVICE`` (cpu, sim,
cuda, cuda:N) overrides what ``bind`` was asked for.
"""

import contextlib
import os
import threading
import time
from collections import deque

import numpy as np

from distdl import backend

_bound = None  # the Device this process is bound to, or None (the host, unless DISTDL_DEVICE says otherwise)
_devices = {}  # spec -> Device, so every caller of get("sim") or get("cuda:0") shares one instance and its streams


class Event:
    """A point in a stream's work: ``synchronize()`` blocks the host until it is reached, ``query()`` asks."""

    def synchronize(self):
        pass

    def query(self):
        return True

    def wait(self, what, timeout=None):
        """``synchronize()`` bounded by ``timeout`` seconds (DISTDL_TIMEOUT by default), polling: a stuck device
        gives TimeoutError naming ``what`` instead of a wait forever (CUDA's own synchronize has no timeout)."""
        timeout = float(os.environ.get("DISTDL_TIMEOUT", 300)) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.query():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} waited {timeout:g} s for the device: it is stuck")
            time.sleep(1e-4)


class Stream:
    """An ordered queue of device work. On the host there is nothing to wait for."""

    def wait_event(self, event):
        """Work enqueued on this stream after this call starts only once ``event`` is reached."""

    def synchronize(self):
        """Block the host until all work enqueued on this stream so far is done."""


class Device:
    """The host: NumPy arrays, synchronous copies and kernels, events always done.

    The subclasses keep the same methods; only their timing differs.
    """

    kind = "cpu"
    index = None
    is_async = False

    def __init__(self):
        self._stream = Stream()

    def __repr__(self):
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def xp(self):
        return np

    def empty(self, shape, dtype):
        """Uninitialised device memory."""
        return np.empty(shape, dtype)

    def pinned_empty(self, shape, dtype):
        """A host NumPy array to stage device data through (page-locked on CUDA, so copies are asynchronous)."""
        return np.empty(shape, dtype)

    def compute_stream(self):
        """The stream the engine's ops run on (CuPy's current stream on a GPU)."""
        return self._stream

    def new_stream(self):
        """A stream of its own, e.g. for communication, that overlaps the compute stream."""
        return self._stream

    def copy_to_host(self, src, dst, stream):
        """Copy device array ``src`` into host array ``dst`` on ``stream`` (asynchronous on sim and cuda)."""
        np.copyto(dst, src)

    def copy_to_device(self, src, dst, stream):
        """Copy host array ``src`` into device array ``dst`` on ``stream`` (asynchronous on sim and cuda)."""
        np.copyto(dst, src)

    def launch(self, stream, fn, *args):
        """Run the kernel ``fn(*args)`` on ``stream``. It writes into the arrays it is given; nothing is returned,
        because on an asynchronous device the work has not happened yet when ``launch`` returns."""
        fn(*args)

    def record_event(self, stream):
        """An Event reached once all work enqueued on ``stream`` so far is done."""
        return Event()

    def forbid_syncs(self):
        """A context in which a host wait for this device that CuPy detects raises (none to detect here)."""
        return contextlib.nullcontext()


class _SimEvent(Event):
    def __init__(self, stream, position):
        self._stream = stream
        self._position = position

    def synchronize(self):
        self._stream._run_until(self._position)

    def query(self):
        """The simulated device is infinitely fast once asked: the work up to the event runs now."""
        self.synchronize()
        return True


class _SimStream(Stream):
    """Deferred work: ops run, in order, only when an event after them is synchronized."""

    def __init__(self, lock):
        self._lock = lock  # one per device: streams that wait on each other run ops from several threads
        self._ops = deque()
        self._queued = 0
        self._done = 0

    def _enqueue(self, op):
        with self._lock:
            self._ops.append(op)
            self._queued += 1

    def _run_until(self, position):
        with self._lock:
            while self._done < position:
                op = self._ops.popleft()
                self._done += 1
                op()

    def _position(self):
        with self._lock:
            return self._queued

    def wait_event(self, event):
        self._enqueue(event.synchronize)

    def synchronize(self):
        self._run_until(self._position())


class _SimComputeStream(Stream):
    """The host's program order: what is launched on it runs at once, and a wait happens at once."""

    def wait_event(self, event):
        event.synchronize()


class SimDevice(Device):
    """The simulated asynchronous device: NumPy arrays, deferred copies and kernels on its streams."""

    kind = "sim"
    is_async = True

    def __init__(self):
        self._lock = threading.RLock()
        self._stream = _SimComputeStream()

    def new_stream(self):
        return _SimStream(self._lock)

    def _run(self, stream, op):
        if isinstance(stream, _SimStream):
            stream._enqueue(op)
        else:
            op()

    def copy_to_host(self, src, dst, stream):
        self._run(stream, lambda: np.copyto(dst, src))

    def copy_to_device(self, src, dst, stream):
        self._run(stream, lambda: np.copyto(dst, src))

    def launch(self, stream, fn, *args):
        self._run(stream, lambda: fn(*args))

    def record_event(self, stream):
        if isinstance(stream, _SimStream):
            return _SimEvent(stream, stream._position())
        return Event()


class _CudaEvent(Event):
    def __init__(self, raw):
        self.raw = raw  # cupy.cuda.Event

    def synchronize(self):
        self.raw.synchronize()

    def query(self):
        return self.raw.done


class _CudaStream(Stream):
    def __init__(self, raw):
        self.raw = raw  # cupy.cuda.Stream

    def wait_event(self, event):
        self.raw.wait_event(event.raw)

    def synchronize(self):
        self.raw.synchronize()


class CudaDevice(Device):
    """GPU ``index`` through CuPy: device arrays, pinned host buffers, asynchronous copies on streams."""

    kind = "cuda"
    is_async = True

    def __init__(self, index):
        self.index = index
        self._cp = backend.cupy()

    @property
    def xp(self):
        return self._cp

    def select(self):
        """Make this GPU the calling thread's current device (CuPy's choice is per thread)."""
        self._cp.cuda.Device(self.index).use()

    def empty(self, shape, dtype):
        with self._cp.cuda.Device(self.index):
            return self._cp.empty(shape, dtype)

    def pinned_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        memory = self._cp.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
        return np.frombuffer(memory, dtype, count).reshape(shape)  # the array keeps the pinned memory alive

    def compute_stream(self):
        with self._cp.cuda.Device(self.index):
            return _CudaStream(self._cp.cuda.get_current_stream())

    def new_stream(self):
        with self._cp.cuda.Device(self.index):
            return _CudaStream(self._cp.cuda.Stream(non_blocking=True))

    def copy_to_host(self, src, dst, stream):
        src.get(stream=stream.raw, out=dst, blocking=False)

    def copy_to_device(self, src, dst, stream):
        dst.set(src, stream=stream.raw)

    def launch(self, stream, fn, *args):
        with self._cp.cuda.Device(self.index), stream.raw:
            fn(*args)

    def record_event(self, stream):
        with self._cp.cuda.Device(self.index):
            event = self._cp.cuda.Event(disable_timing=True)
            event.record(stream.raw)
        return _CudaEvent(event)

    def forbid_syncs(self):
        """CuPy's synchronisation detector (``backend.sync_detector``): a host wait inside raises."""
        return backend.sync_detector()


HOST = Device()


def get(spec=None):
    """The Device for ``spec``: "cpu", "sim", "cuda", "cuda:N" (or a Device); None is ``current()``."""
    if spec is None:
        return current()
    if isinstance(spec, Device):
        return spec
    if spec == "sim":
        key = "sim"
    else:
        try:
            kind, index = backend.parse_device(spec)
        except ValueError:
            raise ValueError(f"unknown device {spec!r}: use 'cpu', 'sim', 'cuda' or 'cuda:N'") from None
        if kind == "cpu":
            return HOST
        if index is None:
            index = backend.cupy_with_a_gpu(f"device={spec!r}").cuda.runtime.getDevice()
        key = f"cuda:{index}"
    if key not in _devices:
        _devices[key] = SimDevice() if key == "sim" else CudaDevice(int(key.partition(":")[2]))
    return _devices[key]


def current():
    """This worker's device: the one bound, else DISTDL_DEVICE's, else the host."""
    if _bound is not None:
        return _bound
    spec = os.environ.get("DISTDL_DEVICE")
    if not spec:
        return HOST
    try:
        return get(spec)
    except ValueError as exc:  # the name came from the environment: say so, or the user looks in the script
        raise ValueError(f"DISTDL_DEVICE={spec!r}: {exc}") from None


def bind(spec=None):
    """Bind this process to a device (DISTDL_DEVICE, when set, wins over ``spec``) and select it in this thread."""
    global _bound
    _bound = get(os.environ.get("DISTDL_DEVICE") or spec or "cpu")
    thread_init()
    return _bound


def thread_init():
    """Select the bound device in the calling thread; every thread distdl starts calls this first."""
    bound = current()
    if bound.kind == "cuda":
        bound.select()


def of(array):
    """The Device an array belongs to: its GPU for a CuPy array, else the simulated device if bound, else the host."""
    if backend.is_gpu_array(array):
        return get(f"cuda:{array.device.id}")
    bound = current()
    return bound if bound.kind == "sim" else HOST
