"""Checks of input values (label and index ranges, counts) without a device-to-host read inside a step.

On the host a check reads its figures at once and raises where the bad input came in. On an
asynchronous device (a GPU, or the simulated device) reading a value makes the host wait for the
device, which stalls every kernel queued behind it; there a check is queued with its figures left
on the device, and ``verify()`` reads every queued check in one copy and raises the first failure,
with the same message the host would give. ``Tensor.item()`` and ``.numpy()`` call it before their
own read: the Trainer's one read a step (the loss, after the step) raises there, and a loop of one's
own sees the error at its next read (PyTorch reports a bad index on a GPU late too, as a device-side assert).

Until the error is raised, the ops of a bad input compute garbage, never read out of bounds: CuPy
wraps out-of-range indices around.
"""

import threading

import numpy as np

from distdl import device

MAX_PENDING = 256  # checks queued before one is forced to read (a loop that never reads the host)

_queued = threading.local()  # per thread: each thread's checks belong to the step it runs


def readable(array):
    """True where reading ``array``'s values costs no wait for a device (a NumPy array on the host)."""
    return not device.of(array).is_async


def check(figures, fails, message, error=ValueError):
    """Raise ``error(message(values))`` if ``fails(values)``, ``values`` being ``figures`` read as Python numbers.

    ``figures`` is a small 1-D array (on the device of the data it describes). On the host the check
    runs now; on an asynchronous device it runs at the next ``verify()``.
    """
    if readable(figures):
        _raise_if_failed(np.asarray(figures).tolist(), fails, message, error)
        return
    pending = _pending()
    pending.append((figures, fails, message, error))
    if len(pending) > MAX_PENDING:
        verify()


def verify():
    """Read the queued checks of this thread (one copy per array module) and raise the first that fails."""
    pending = _pending()
    if not pending:
        return
    checks, pending[:] = list(pending), []
    values = {}
    for xp in {device.of(figures).xp for figures, *_ in checks}:
        mine = [figures for figures, *_ in checks if device.of(figures).xp is xp]
        raw = xp.concatenate([xp.ascontiguousarray(figures).ravel().view(xp.uint8) for figures in mine])
        host = raw.get() if xp is not np else raw  # the one read: bytes, so every dtype comes back exact
        offset = 0
        for figures in mine:
            values[id(figures)] = host[offset:offset + figures.nbytes].view(figures.dtype).tolist()
            offset += figures.nbytes
    for figures, fails, message, error in checks:
        _raise_if_failed(values[id(figures)], fails, message, error)


def pending_count():
    """How many checks this thread has queued and not yet verified."""
    return len(_pending())


def _pending():
    if not hasattr(_queued, "checks"):
        _queued.checks = []
    return _queued.checks


def _raise_if_failed(values, fails, message, error):
    if fails(values):
        raise error(message(values))
