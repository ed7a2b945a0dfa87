"""Random numbers keyed by (seed, epoch, sample index), so they do not depend on the world size.

A sample's crop and flip are a hash of its key, not a draw from a generator whose
state depends on which samples came before it on this rank. So the same sample
gets the same augmentation whether 1 or 8 workers train, and a resumed job redoes
exactly what the interrupted one would have done. The hash is SplitMix64's
finaliser (``distdl.rng``, which the engine's draws use too), vectorised over the indices.
"""

import numpy as np

from distdl.rng import MASK, mix_array, mix_int


def permutation(n, seed, epoch):
    """The shuffled order of ``n`` samples for this (seed, epoch): the same on every rank."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class SampleKeys:
    """Per-sample random numbers for one batch: ``uniform(stream)`` gives one value per sample.

    Distinct streams give independent values; ``fork(tag)`` derives the keys a
    sub-transform uses, so two random transforms in a Compose never share draws.
    """

    def __init__(self, seed, epoch, indices, _prefix=None):
        self.seed, self.epoch = int(seed), int(epoch)
        self.indices = np.asarray(indices, dtype=np.int64)
        self._prefix = mix_int(mix_int(self.seed & MASK) ^ (self.epoch & MASK)) if _prefix is None else _prefix

    def __len__(self):
        return len(self.indices)

    def fork(self, tag):
        return SampleKeys(self.seed, self.epoch, self.indices, mix_int(self._prefix ^ (int(tag) + 1)))

    def uniform(self, stream=0):
        """One float64 in [0, 1) per sample."""
        key = np.uint64(mix_int(self._prefix ^ ((int(stream) + 1) << 32)))
        bits = mix_array(self.indices.astype(np.uint64) ^ key)
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def integers(self, high, stream=0):
        """One integer in [0, high) per sample."""
        return np.minimum((self.uniform(stream) * high).astype(np.int64), high - 1)
