"""Batches from a dataset: index batches from a sampler, a vectorised fetch, transforms, prefetch."""

import queue
import threading

import numpy as np

from distdl import device as devices
from distdl.backend import to_device
from distdl.data.collate import default_collate, same_kind
from distdl.data.keyed_random import SampleKeys
from distdl.data.sampler import RandomSampler, Sampler, SequentialSampler
from distdl.data.staging import StagingRing, map_batch


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    - ``shuffle=True`` visits a new seeded permutation each epoch (pass ``sampler``
      instead to choose the order, e.g. a DistributedSampler, and then call its
      ``set_epoch`` or the loader's before each epoch).
    - A dataset with ``get_batch(indices)`` (TensorDataset, Subset) is fetched a
      whole batch at a time; other datasets item by item, then ``collate_fn``.
    - ``transform`` is a batch transform applied to one field of each batch (field
      ``transform_key``: the first by default): it gets the batch and the
      SampleKeys of its samples, so its random choices depend only on
      (seed, epoch, sample index).
    - ``prefetch=k`` loads up to k batches ahead in a background thread, so that
      loading overlaps compute; the batches and their order are the same as with 0.
    - ``device="cuda"`` (or "cuda:N", "sim") hands the batches over as arrays on that device, copied
      through pinned host buffers on a stream of their own while the model works on the batch before
      (data/staging.py); the compute stream waits for a batch's copy before it is handed out.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, sampler=None, drop_last=False, collate_fn=None,
                 transform=None, transform_key=0, prefetch=2, device=None, seed=0):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if sampler is not None and shuffle:
            raise ValueError("give either shuffle=True or a sampler, not both: the sampler decides the order")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.transform, self.transform_key = transform, transform_key
        self.prefetch = int(prefetch)
        self.device = None if device is None else devices.get(device)  # without CuPy, "cuda" says what to install
        self._owns_sampler = sampler is None
        if sampler is None:
            sampler = RandomSampler(dataset, seed=seed) if shuffle else SequentialSampler(dataset)
        self.sampler = sampler

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def state_dict(self):
        """Where the iteration stands: the sampler's epoch and the samples delivered so far."""
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"a {type(self.sampler).__name__} sampler keeps no state; use a distdl.data sampler")
        return self.sampler.state_dict()

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state)

    def _index_batches(self):
        if isinstance(self.sampler, Sampler):
            order = self.sampler.remaining()
        else:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]

    def _keys(self, indices):
        return SampleKeys(getattr(self.sampler, "seed", 0), getattr(self.sampler, "epoch", 0), indices)

    def load_batch(self, indices):
        """The collated, transformed batch of the samples at ``indices`` (on the host)."""
        if self.collate_fn is None and hasattr(self.dataset, "get_batch"):
            batch = self.dataset.get_batch(indices)
        else:
            batch = (self.collate_fn or default_collate)([self.dataset[int(i)] for i in indices])
        if self.transform is None:
            return batch
        if not isinstance(batch, (tuple, list, dict)):
            return self.transform(batch, self._keys(indices))
        fields = dict(batch) if isinstance(batch, dict) else list(batch)
        fields[self.transform_key] = self.transform(fields[self.transform_key], self._keys(indices))
        return fields if isinstance(batch, dict) else same_kind(batch, fields)

    def __iter__(self):
        batches = ((len(indices), self.load_batch(indices)) for indices in self._index_batches())
        staging = self.device is not None and self.device.is_async
        on_host = self.device is not None and not staging  # device="cpu": a dataset's GPU arrays come to the host
        if staging:  # a pinned buffer per batch loaded ahead, one being filled, one whose copy may be running
            ring = StagingRing(self.device, slots=self.prefetch + 3)
            batches = ((count, ring.stage(batch)) for count, batch in batches)
        if self.prefetch > 0:
            batches = _prefetched(batches, self.prefetch)
        delivered = ring.uploaded(batches, lookahead=min(self.prefetch, 1)) if staging else batches
        try:
            for count, batch in delivered:
                if isinstance(self.sampler, Sampler):
                    self.sampler.position += count  # delivered, not merely prefetched
                yield map_batch(batch, _on_host) if on_host else batch
        finally:
            delivered.close()
            batches.close()
        if self._owns_sampler:
            self.sampler.set_epoch(self.sampler.epoch + 1)


def _on_host(leaf):
    return to_device(leaf, "cpu")


_DONE = object()


def _prefetched(batches, depth):
    """Run the ``batches`` generator in a thread, up to ``depth`` items ahead; errors surface here."""
    ready = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            devices.thread_init()  # CuPy's current device is per thread: this one must use the worker's GPU too
            for batch in batches:
                if not _put(ready, (batch, None), stop):
                    return
            _put(ready, (_DONE, None), stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(ready, (_DONE, exc), stop)

    thread = threading.Thread(target=produce, name="distdl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        thread.join()


def _put(q, item, stop):
    """Put unless the consumer has gone away; False when it has."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
