"""Batches to an asynchronous device (a GPU, the simulated device) through a ring of pinned host buffers.

A copy from pageable host memory to a GPU is synchronous; from page-locked (pinned) memory it runs on a
stream while the host goes on. So each batch is copied on the host into a free pinned buffer (in the
prefetch thread when there is one), then to fresh device arrays on a copy stream of its own, so that
it overlaps the compute stream's work on the batch before; an event recorded after the copy is what the
compute stream waits on before the batch is handed out. A pinned buffer is reused only once the event
of its last copy has completed: before that, the copy may still be reading it.

The device arrays come from the device's memory pool on the compute stream, whose kernels may still read
a block that was freed and handed out again; the copy stream therefore first waits on the compute
stream's work enqueued so far.
"""

import queue

import numpy as np

from distdl.data.collate import same_kind

_ALIGN = 64  # bytes between the fields of one batch in a pinned buffer: every dtype stays aligned
_FREE_WAIT = 60.0  # seconds; with slots >= batches in flight + 2 a buffer is always free: waiting longer is a bug


class _Slot:
    """One pinned host buffer and the event of the last copy that read it."""

    def __init__(self):
        self.buffer = None
        self.event = None

    def reuse(self):
        """Wait until the last copy from this buffer is done: only then may the host write into it again."""
        if self.event is not None:
            self.event.wait("DataLoader: a pinned staging buffer's copy to the device")
            self.event = None


class StagingRing:
    """``slots`` pinned buffers through which batches go to ``device``; ``stage`` fills one, ``upload`` sends it."""

    def __init__(self, device, slots):
        self.device = device
        self._free = queue.Queue()
        for _ in range(slots):
            self._free.put(_Slot())
        self._copies = device.new_stream()

    def stage(self, batch):
        """Copy the batch's arrays into a free pinned buffer; returns (the batch made of pinned views, its slot)."""
        try:
            slot = self._free.get(timeout=_FREE_WAIT)
        except queue.Empty:
            raise RuntimeError(f"DataLoader: no pinned staging buffer came free in {_FREE_WAIT:.0f} s; "
                               "this is a bug in distdl's staging ring, please report it") from None
        slot.reuse()
        leaves = [leaf for leaf in _leaves(batch) if _staged(leaf)]
        offsets, end = [], 0
        for leaf in leaves:
            offsets.append(end)
            end += -(-leaf.nbytes // _ALIGN) * _ALIGN
        if slot.buffer is None or slot.buffer.nbytes < end:
            slot.buffer = self.device.pinned_empty((max(end, 1),), np.uint8)
        views = {}
        for leaf, offset in zip(leaves, offsets):
            view = slot.buffer[offset:offset + leaf.nbytes].view(leaf.dtype).reshape(leaf.shape)
            np.copyto(view, leaf)
            views[id(leaf)] = view
        return map_batch(batch, lambda leaf: views.get(id(leaf), leaf)), slot

    def upload(self, staged, slot, compute):
        """Copy a staged batch to new device arrays on the copy stream; returns (device batch, copy event).

        Call it on the thread that runs the compute stream ``compute``: the arrays come from its memory pool.
        """
        device = self.device
        self._copies.wait_event(device.record_event(compute))

        def upload_leaf(leaf):
            if not _staged(leaf):
                return leaf
            target = device.empty(leaf.shape, leaf.dtype)
            device.copy_to_device(leaf, target, self._copies)
            return target

        on_device = map_batch(staged, upload_leaf)
        slot.event = device.record_event(self._copies)
        self._free.put(slot)
        return on_device, slot.event

    def uploaded(self, batches, lookahead):
        """(count, device batch) for each (count, (staged, slot)); ``lookahead`` uploads run ahead of the one handed
        out, so copying batch k+1 overlaps the compute on batch k. The compute stream waits on a batch's copy
        before the batch is handed out."""
        compute = self.device.compute_stream()
        in_flight = []
        try:
            for count, (staged, slot) in batches:
                in_flight.append((count, *self.upload(staged, slot, compute)))
                if len(in_flight) > lookahead:
                    yield _handed_out(compute, *in_flight.pop(0))
            while in_flight:
                yield _handed_out(compute, *in_flight.pop(0))
        finally:  # a loop left early: the pool may give these batches' memory to the compute stream only after
            for _, _, event in in_flight:  # their copies, which may still be writing it
                compute.wait_event(event)


def _handed_out(compute, count, batch, event):
    compute.wait_event(event)
    return count, batch


def _staged(leaf):
    """Numeric host arrays go through the pinned buffers; anything else (strings, device arrays) as it is."""
    return isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biufc"


def _leaves(batch):
    """The batch's leaves in ``map_batch``'s order (the one walk over a batch)."""
    found = []
    map_batch(batch, found.append)
    return found


def map_batch(batch, fn):
    """The batch with ``fn`` applied to every leaf (array, string, number), keeping dicts, tuples and lists."""
    if isinstance(batch, dict):
        return {key: map_batch(value, fn) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return same_kind(batch, [map_batch(value, fn) for value in batch])
    return fn(batch)
