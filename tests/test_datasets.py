"""The embedded digits, the synthetic generators and the K-fold splitters."""

import numpy as np
import pytest

from distdl.data import (KFold, StratifiedKFold, load_digits, make_blobs, make_images, make_regression,
                         make_sequences, make_spirals)


def test_embedded_digits():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() == 1
    assert y.dtype == np.int64 and np.array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    flat, _ = load_digits(flatten=True, dtype=np.float64)
    assert flat.shape == (1797, 64) and flat.dtype == np.float64
    np.testing.assert_array_equal(flat.reshape(x.shape).astype(np.float32), x)
    big, _ = load_digits(size=28)
    assert big.shape == (1797, 1, 28, 28) and np.array_equal(big[:, :, ::28 // 8 + 1][:, :, :1, :1], x[:, :, :1, :1])
    # classes differ: the mean images of two digits are far apart
    assert np.abs(x[y == 0].mean(0) - x[y == 1].mean(0)).sum() > 5


@pytest.mark.parametrize("make", [make_blobs, make_spirals, make_regression, make_sequences, make_images])
def test_generators_are_seeded(make):
    first, again, other = make(seed=1), make(seed=1), make(seed=2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_generators_make_what_they_say():
    x, y = make_blobs(300, n_features=4, centers=3, cluster_std=0.1)
    assert x.shape == (300, 4) and np.array_equal(np.bincount(y), [100, 100, 100])
    x, y = make_spirals(400, n_classes=4)
    assert x.shape == (400, 2) and set(y.tolist()) == {0, 1, 2, 3}
    x, y, weight, bias = make_regression(500, n_features=3, noise=0.0)
    np.testing.assert_allclose(y[:, 0], x @ weight + bias, rtol=1e-5, atol=1e-5)
    x, y = make_images(50, shape=(2, 8, 8), classes=5)
    assert x.shape == (50, 2, 8, 8) and np.array_equal(np.bincount(y), [10] * 5)
    x, y = make_sequences(200, seq_len=10)
    assert x.shape == (200, 10, 2) and y.shape == (200, 1)
    marked = x[:, :, 1].argmax(axis=1)
    assert np.all(x[:, :, 1].sum(axis=1) == 1) and np.all(marked < 5)
    np.testing.assert_array_equal(y[:, 0], x[np.arange(200), marked, 0] > 0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_kfold_partitions(shuffle):
    folds = list(KFold(4, shuffle=shuffle, seed=1).split(np.zeros(10)))
    assert [len(test) for _, test in folds] == [3, 3, 2, 2]
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(10))
    for train, test in folds:
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="cannot split 3 samples into 4 folds"):
        list(KFold(4).split(3))


@pytest.mark.parametrize("shuffle", [False, True])
def test_stratified_kfold_keeps_class_shares(shuffle):
    y = np.array([0] * 20 + [1] * 7 + [2] * 3)
    folds = list(StratifiedKFold(3, shuffle=shuffle, seed=0).split(np.zeros(30), y))
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(30))
    for train, test in folds:
        assert not set(train) & set(test)
        for label, count in enumerate(np.bincount(y)):
            assert np.sum(y[test] == label) in (count // 3, -(-count // 3))
    assert sorted(len(test) for _, test in folds) == [10, 10, 10]
