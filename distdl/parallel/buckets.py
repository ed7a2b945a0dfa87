"""Flat gradient buckets: each parameter's ``.grad`` is a view into one, so the allreduce copies nothing."""

from distdl.backend import xp_of


class Bucket:
    """One flat array holding the gradients of ``params`` (a run of parameters of one dtype and device)."""

    def __init__(self, params):
        self.params = params
        xp = xp_of(params[0].data)
        self.flat = xp.zeros(sum(p.data.size for p in params), params[0].data.dtype)
        self.views = {}
        offset = 0
        for p in params:
            self.views[p] = self.flat[offset:offset + p.data.size].reshape(p.data.shape)
            offset += p.data.size
        self.pending = len(params)  # gradients not yet final in the current backward pass
        self.request = None

    @property
    def nbytes(self):
        return self.flat.nbytes


def plan_buckets(params, bucket_bytes):
    """Group ``params`` into buckets in reverse order (the order backward produces gradients).

    A bucket closes when it reaches ``bucket_bytes`` or the dtype or device changes.
    """
    buckets, current, size = [], [], 0
    for p in reversed(params):
        if current and (size + p.data.nbytes > bucket_bytes or _kind(p) != _kind(current[0])):
            buckets.append(Bucket(current))
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        buckets.append(Bucket(current))
    return buckets


def _kind(p):
    return p.data.dtype, type(p.data)


def coalesced(arrays):
    """Arrays grouped by dtype, each group flattened into one array: fewer, larger messages."""
    groups = {}
    for array in arrays:
        groups.setdefault(array.dtype, []).append(array)
    for group in groups.values():
        yield group, xp_of(group[0]).concatenate([a.reshape(-1) for a in group])
