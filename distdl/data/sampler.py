"""Which sample indices a worker visits, in which order, epoch by epoch, and where it stopped.

Every sampler here has a ``seed`` and an ``epoch`` (the key of its shuffle and of
augmentation), and a ``position``: how many of this epoch's indices were already
delivered. ``state_dict()`` records them so that a resumed job goes on where the
interrupted one stopped; ``set_epoch`` to a new epoch starts it from the beginning.
"""

import numpy as np

from distdl.comm import get_comm
from distdl.data.keyed_random import permutation


class Sampler:
    """Base of the samplers: subclasses implement ``epoch_indices()`` (the whole epoch, in order)."""

    def __init__(self, seed=0):
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0

    def epoch_indices(self):
        raise NotImplementedError

    def __len__(self):
        return len(self.epoch_indices())

    def set_epoch(self, epoch):
        """Choose the epoch (and so the shuffle); a new epoch starts from its first index."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def remaining(self):
        """This epoch's indices not yet delivered; a finished epoch starts over, as PyTorch's samplers do."""
        order = self.epoch_indices()
        if self.position >= len(order):
            self.position = 0
        return order[self.position:]

    def __iter__(self):
        for index in self.remaining():
            self.position += 1
            yield int(index)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])


class SequentialSampler(Sampler):
    """0, 1, ..., n-1."""

    def __init__(self, data_source):
        super().__init__()
        self.num_samples = len(data_source)

    def epoch_indices(self):
        return np.arange(self.num_samples)


class RandomSampler(Sampler):
    """A permutation of 0..n-1 keyed by (seed, epoch): ``set_epoch`` gives a new order."""

    def __init__(self, data_source, seed=0):
        super().__init__(seed)
        self.num_samples = len(data_source)

    def epoch_indices(self):
        return permutation(self.num_samples, self.seed, self.epoch)


class DistributedSampler(Sampler):
    """This rank's share of the dataset: every index goes to exactly one rank each epoch.

    The epoch's order (a permutation keyed by (seed, epoch) when ``shuffle``, else
    0..n-1) is the same on every rank and does not depend on the world size; rank r
    takes the positions r, r + W, r + 2W, ... of it. Call ``set_epoch(e)`` before
    each epoch, on every rank, or every epoch repeats the same order.

    When n is not a multiple of the world size W:

    - ``drop_last=False, pad=True`` (the default, for training): the order is padded
      by repeating its first indices until every rank has ceil(n / W) of them, so
      every rank runs the same number of steps. Up to W - 1 samples are seen twice
      per epoch.
    - ``pad=False`` (for evaluation): no sample is repeated; shards differ in length
      by at most one, and metrics summed over the ranks count every sample exactly once.
    - ``drop_last=True``: the last n mod W indices of the order are dropped.

    ``num_replicas`` and ``rank`` default to those of the initialised communicator.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False, pad=True):
        super().__init__(seed)
        if num_replicas is None or rank is None:
            comm = get_comm()
            num_replicas = comm.size if num_replicas is None else num_replicas
            rank = comm.rank if rank is None else rank
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} is not in a world of {num_replicas} replicas")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.drop_last, self.pad = shuffle, drop_last, pad
        self.dataset_size = len(dataset)
        n, w = self.dataset_size, self.num_replicas
        if drop_last:
            self.total_size = n // w * w
        elif pad:
            self.total_size = -(-n // w) * w
        else:
            self.total_size = n
        self.num_samples = len(range(self.rank, self.total_size, w))

    def __len__(self):
        return self.num_samples

    def epoch_indices(self):
        n = self.dataset_size
        order = permutation(n, self.seed, self.epoch) if self.shuffle else np.arange(n)
        if self.total_size > n and n > 0:
            order = np.resize(order, self.total_size)  # repeats the order from its start
        return order[self.rank:self.total_size:self.num_replicas]

    def state_dict(self):
        """Epoch and position, with the position also counted over all ranks (``samples_seen``).

        Ranks take interleaved positions of one world-size-independent order, so
        the first ``samples_seen`` entries of it are done: a job resumed on a
        different number of workers continues from there.
        """
        return {**super().state_dict(), "samples_seen": self.position * self.num_replicas}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.position = int(state.get("samples_seen", self.position)) // self.num_replicas
