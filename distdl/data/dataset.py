"""Map-style datasets: a length and an item per index, plus a vectorised batch fetch where it is cheap."""

import numbers

import numpy as np

from distdl.data.collate import default_collate


class Dataset:
    """A sized collection indexed by integers 0..len-1.

    Subclasses implement ``__len__`` and ``__getitem__``. They may also implement
    ``get_batch(indices)`` returning an already collated batch; the DataLoader then
    loads a whole batch with one fancy index instead of one item at a time.
    """

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError


class TensorDataset(Dataset):
    """Arrays that share their first dimension; item i is the tuple of every array's row i."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        arrays = tuple(a if hasattr(a, "shape") else np.asarray(a) for a in arrays)
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset arrays must have the same first dimension, got lengths {lengths}")
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices):
        return tuple(a[indices] for a in self.arrays)


class Subset(Dataset):
    """The items of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and not (0 <= self.indices.min() and self.indices.max() < len(dataset)):
            raise IndexError(f"Subset indices must lie in [0, {len(dataset)}), the length of the dataset")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def get_batch(self, indices):
        inner = self.indices[np.asarray(indices, dtype=np.int64)]
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(inner)
        return default_collate([self.dataset[int(i)] for i in inner])


def random_split(dataset, lengths, seed=0):
    """Split ``dataset`` into non-overlapping Subsets of the given lengths, in a seeded random order.

    ``lengths`` are counts that sum to ``len(dataset)``, or fractions that sum to 1
    (the remainder of the rounding goes to the first subsets, as PyTorch does).
    """
    n = len(dataset)
    if all(isinstance(x, numbers.Integral) for x in lengths):
        counts = [int(x) for x in lengths]
    elif abs(sum(lengths) - 1) < 1e-9 and all(0 <= x <= 1 for x in lengths):
        counts = [int(np.floor(n * x)) for x in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
    else:
        raise ValueError(f"random_split lengths must be counts or fractions summing to 1, got {lengths}")
    if sum(counts) != n or min(counts) < 0:
        raise ValueError(f"random_split lengths {counts} do not add up to the dataset's length {n}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
