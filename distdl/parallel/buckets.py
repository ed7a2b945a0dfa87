"""Flat gradient buckets: each parameter's ``.grad`` is a view into one, so the allreduce copies nothing.

After the gradients, every bucket carries a few control elements that travel in the
same reduction (see ``control.py``): whether this rank's gradients were finite, whether
it had a batch, and the bits of its step, so the ranks check that they agree without a
message of their own.
"""

from distdl.backend import xp_of
from distdl.parallel.control import CONTROL_SIZE


class Bucket:
    """One flat array holding the gradients of ``params`` (a run of parameters of one dtype and device).

    What a communication hook gets, with torch's ``GradBucket`` names: ``index()``,
    ``buffer()`` (the whole flat array, control elements included: a hook averages all
    of it), ``parameters()``, ``is_last()``; ``grads`` and ``control`` are views of its
    two parts.
    """

    def __init__(self, index, params, last):
        self.params = params
        self._index, self._last = index, last
        xp = xp_of(params[0].data)
        size = sum(p.data.size for p in params)
        self.flat = xp.zeros(size + CONTROL_SIZE, params[0].data.dtype)
        self.grads, self.control = self.flat[:size], self.flat[size:]
        self.views = {}
        offset = 0
        for p in params:
            self.views[p] = self.flat[offset:offset + p.data.size].reshape(p.data.shape)
            offset += p.data.size
        self.pending = len(params)  # gradients not yet final in the current backward pass
        self.request = None

    def index(self):
        return self._index

    def buffer(self):
        return self.flat

    def parameters(self):
        return list(self.params)

    def is_last(self):
        return self._last

    @property
    def nbytes(self):
        return self.flat.nbytes


def plan_buckets(params, bucket_bytes):
    """Group ``params`` into buckets in reverse order (the order backward produces gradients).

    A bucket closes when it reaches ``bucket_bytes`` or the dtype or device changes.
    """
    groups, current, size = [], [], 0
    for p in reversed(params):
        if current and (size + p.data.nbytes > bucket_bytes or _kind(p) != _kind(current[0])):
            groups.append(current)
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        groups.append(current)
    return [Bucket(i, group, i == len(groups) - 1) for i, group in enumerate(groups)]


def layout_of(buckets):
    """The bucket layout as one line of text: gradient counts and dtypes, what every rank must share."""
    return ";".join(f"{b.grads.size}:{b.grads.dtype}" for b in buckets)


def _kind(p):
    return p.data.dtype, type(p.data)


def coalesced(arrays):
    """Arrays grouped by dtype, each group flattened into one array: fewer, larger messages."""
    groups = {}
    for array in arrays:
        groups.setdefault(array.dtype, []).append(array)
    for group in groups.values():
        yield group, xp_of(group[0]).concatenate([a.reshape(-1) for a in group])
