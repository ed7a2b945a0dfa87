"""K-fold splits for cross-validation, plain and stratified (sklearn's conventions)."""

import numpy as np


class KFold:
    """``n_splits`` consecutive folds (shuffled first when ``shuffle``); each is the test set once.

    ``split(x)`` yields ``(train_indices, test_indices)``; the first n % k folds hold
    one sample more than the others.
    """

    def __init__(self, n_splits=5, shuffle=False, seed=0):
        if int(n_splits) < 2:
            raise ValueError(f"KFold needs n_splits >= 2, got {n_splits}")
        self.n_splits, self.shuffle, self.seed = int(n_splits), shuffle, seed

    def _check(self, n):
        if self.n_splits > n:
            raise ValueError(f"cannot split {n} samples into {self.n_splits} folds")

    def split(self, x, y=None):
        n = x if isinstance(x, (int, np.integer)) else len(x)
        self._check(n)
        order = np.random.default_rng(self.seed).permutation(n) if self.shuffle else np.arange(n)
        sizes = np.full(self.n_splits, n // self.n_splits)
        sizes[:n % self.n_splits] += 1
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield np.sort(np.concatenate([order[:a], order[b:]])), np.sort(order[a:b])


class StratifiedKFold(KFold):
    """Folds that keep each class's share: a class's samples are dealt to the folds in turn.

    Every fold gets either floor or ceil of (class count / k) samples of each class.
    """

    def split(self, x, y=None):
        if y is None:
            raise ValueError("StratifiedKFold.split needs the labels y")
        y = np.asarray(y)
        self._check(len(y))
        rng = np.random.default_rng(self.seed)
        fold_of = np.empty(len(y), np.int64)
        dealt = 0  # rotate the starting fold per class so that fold sizes stay balanced
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            if self.shuffle:
                members = rng.permutation(members)
            fold_of[members] = (dealt + np.arange(len(members))) % self.n_splits
            dealt += len(members)
        for fold in range(self.n_splits):
            yield np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
