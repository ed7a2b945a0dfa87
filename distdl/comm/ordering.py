"""The communication thread and the call order: non-blocking collectives run one at a time, in the order called.

MPI libraries often make no progress in the background, so ``iallreduce`` runs
its collective on a thread of its own while the caller computes. A blocking
collective first waits for the non-blocking ones issued before it, so every rank
sees the same sequence of calls. The first failure is kept: later calls are not
started, and the communicator becomes unusable.
"""

import queue
import threading
import time

from distdl import device
from distdl.comm.errors import DistError


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


class CommThread:
    """Runs submitted collectives on one daemon thread, in submission order, and remembers the first failure."""

    def __init__(self, rank):
        self.rank = rank
        self.pending = []  # requests not yet waited for by a later call
        self.failure = None
        self._jobs = None
        self._thread = None

    def submit(self, run):
        """Run ``run()`` on the communication thread after everything submitted before; return its Request.

        Submitted from the thread itself (a hook returning ``comm.iallreduce(...)``'s handle), ``run`` runs at
        once, in its place in the order: queued, it would wait forever behind the job that waits for it.
        """
        if self.is_current():
            run()
            return CompletedRequest()
        request = Request()
        if self._thread is None:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, name=f"distdl-comm-{self.rank}", daemon=True)
            self._thread.start()
        # requests that are done and succeeded need no later wait: a loop that never makes a blocking
        # collective (DDP with a hook, on a device) must not keep one per bucket and step
        self.pending = [r for r in self.pending if not r.done() or r._error is not None]
        self.pending.append(request)
        self._jobs.put((request, run))
        return request

    def wait_pending(self):
        """Wait for every request submitted so far; the first one that failed raises."""
        pending, self.pending = self.pending, []
        for request in pending:
            request.wait()

    def is_current(self):
        """Whether the caller is the communication thread itself."""
        return threading.current_thread() is self._thread

    def stop(self):
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _serve(self):
        try:
            device.thread_init()  # CuPy's current device is per thread: this one must use the worker's GPU too
        except BaseException as exc:  # e.g. DISTDL_DEVICE=cuda without CuPy: every request fails with it, none hangs
            self.failure = exc
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, run = job
            if self.failure is not None:
                request._finish(DistError(f"rank {self.rank}: not started, an earlier collective failed "
                                          f"({self.failure})"))
                continue
            try:
                run()
                request._finish()
            except BaseException as exc:  # handed to whoever waits on the request
                self.failure = exc
                request._finish(exc)
