"""Whether operations record a graph: ``no_grad()`` turns recording off in a block."""

import contextlib
import threading

class _GradMode(threading.local):
    enabled = True  # each thread starts recording; a class default reads faster than getattr's fallback


_state = _GradMode()


def is_grad_enabled():
    return _state.enabled


def set_grad_enabled(enabled):
    _state.enabled = bool(enabled)


@contextlib.contextmanager
def _grad_mode(enabled):
    previous = is_grad_enabled()
    set_grad_enabled(enabled)
    try:
        yield
    finally:
        set_grad_enabled(previous)


def no_grad():
    """Context manager in which no graph is built (evaluation, optimizer updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager that turns recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)
