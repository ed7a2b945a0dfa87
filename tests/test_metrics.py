"""Metrics against brute-force definitions; over shards they equal the metric over the whole set."""

import itertools

import numpy as np
import pytest

import distdl as dl
from distdl import metrics as M
from distdl.comm import LocalCommunicator

RNG = np.random.default_rng(0)


def brute_confusion(y, p, size):
    matrix = np.zeros((size, size), np.int64)
    for t, q in zip(y, p):
        matrix[t, q] += 1
    return matrix


def brute_prf(y, p, average, kind, labels=None):
    """Precision, recall or F1 from per-class counts, written the long way."""
    labels = sorted(set(y) | set(p)) if labels is None else labels
    if average == "binary":
        labels = [1]
    counts = []
    for c in labels:
        tp = sum(1 for t, q in zip(y, p) if t == c and q == c)
        fp = sum(1 for t, q in zip(y, p) if t != c and q == c)
        fn = sum(1 for t, q in zip(y, p) if t == c and q != c)
        counts.append((tp, fp, fn, sum(1 for t in y if t == c)))

    def score(tp, fp, fn):
        num, den = {"precision": (tp, tp + fp), "recall": (tp, tp + fn), "f1": (2 * tp, 2 * tp + fp + fn)}[kind]
        return num / den if den else 0.0

    if average == "micro":
        return score(*(sum(c[i] for c in counts) for i in range(3)))
    scores = [score(*c[:3]) for c in counts]
    if average in ("binary", "macro"):
        return sum(scores) / len(scores)
    support = [c[3] for c in counts]
    return sum(s * w for s, w in zip(scores, support)) / sum(support) if sum(support) else 0.0


def brute_auc(y, s):
    """The share of (positive, negative) pairs ranked right, ties counting half."""
    pairs = [(a, b) for a, b in itertools.product(s[y == 1], s[y == 0])]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_accuracy_from_labels_scores_and_probabilities():
    y = RNG.integers(0, 5, 200)
    scores = RNG.random((200, 5))
    assert M.accuracy(y, scores) == np.mean([t == np.argmax(s) for t, s in zip(y, scores)])
    assert M.accuracy(y, y) == 1.0
    yb, prob = RNG.integers(0, 2, 100), RNG.random((100, 1))
    assert M.accuracy(yb.astype(np.float32)[:, None], prob) == np.mean([t == (q >= 0.5) for t, q in zip(yb, prob[:, 0])])
    assert M.accuracy(yb, prob - 0.5, threshold=0.0) == M.accuracy(yb, prob)
    assert M.accuracy(y, dl.tensor(scores)) == M.accuracy(y, scores)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_accuracy(k):
    y = RNG.integers(0, 6, 300)
    scores = RNG.integers(0, 4, (300, 6)).astype(float)  # many ties: a lower class index wins them
    expected = np.mean([t in sorted(range(6), key=lambda c: (-s[c], c))[:k] for t, s in zip(y, scores)])
    assert M.top_k_accuracy(y, scores, k) == expected
    assert M.get(f"top{k}_accuracy").update(y, scores).compute() == expected


@pytest.mark.parametrize("trial", range(20))
def test_confusion_precision_recall_f1_against_their_definitions(trial):
    rng = np.random.default_rng(trial)
    classes = int(rng.integers(2, 6))
    n = int(rng.integers(1, 60))
    y, p = rng.integers(0, classes, n), rng.integers(0, classes, n)
    size = int(max(y.max(), p.max())) + 1
    np.testing.assert_array_equal(M.confusion_matrix(y, p), brute_confusion(y, p, size))
    functions = {"precision": M.precision, "recall": M.recall, "f1": M.f1_score}
    for kind, function in functions.items():
        for average in ("micro", "macro", "weighted"):
            assert function(y, p, average) == pytest.approx(brute_prf(y, p, average, kind), abs=1e-12)
            assert function(y, p, average, num_classes=6) == pytest.approx(
                brute_prf(y, p, average, kind, labels=range(6)), abs=1e-12)
        yb, pb = y % 2, p % 2
        assert function(yb, pb) == pytest.approx(brute_prf(yb, pb, "binary", kind), abs=1e-12)


@pytest.mark.parametrize("trial", range(20))
def test_roc_auc_against_pair_counting_with_ties(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(2, 80))
    y = np.r_[0, 1, rng.integers(0, 2, n)]
    scores = rng.integers(0, 5, len(y)).astype(float) if trial % 2 else rng.random(len(y))
    assert M.roc_auc_score(y, scores) == pytest.approx(brute_auc(y, scores), abs=1e-12)
    assert M.roc_auc_score(y, np.stack([1 - scores, scores], axis=1)) == pytest.approx(brute_auc(y, scores))


def test_log_loss_and_regression_errors():
    y = RNG.integers(0, 3, 50)
    probs = RNG.random((50, 3)) + 0.01
    probs /= probs.sum(axis=1, keepdims=True)
    assert M.log_loss(y, probs) == pytest.approx(-np.mean([np.log(q[t]) for t, q in zip(y, probs)]))
    yb, pb = RNG.integers(0, 2, 50), RNG.random(50)
    assert M.log_loss(yb, pb) == pytest.approx(-np.mean(np.where(yb == 1, np.log(pb), np.log(1 - pb))))

    t, q = RNG.random((40, 3)), RNG.random((40, 3))
    assert M.mean_squared_error(t, q) == pytest.approx(np.mean((t - q) ** 2))
    assert M.mean_absolute_error(t, q) == pytest.approx(np.mean(np.abs(t - q)))
    r2 = [1 - ((t[:, j] - q[:, j]) ** 2).sum() / ((t[:, j] - t[:, j].mean()) ** 2).sum() for j in range(3)]
    assert M.r2_score(t, q) == pytest.approx(np.mean(r2))
    assert M.r2_score(t[:, 0], t[:, 0]) == 1.0


def shard_bounds(n, parts):
    return np.linspace(0, n, parts + 1).astype(int)


@pytest.mark.parametrize("name", ["accuracy", "top3_accuracy", "precision", "recall", "f1", "auc", "log_loss",
                                  "mse", "mae", "r2", "confusion_matrix"])
def test_merged_shards_equal_the_whole_set(name):
    """Classes absent from some shards included: shard 0 holds only classes 0 and 1."""
    y = np.r_[RNG.integers(0, 2, 30), RNG.integers(0, 4, 70)]
    scores = RNG.random((100, 4))
    scores /= scores.sum(axis=1, keepdims=True)
    options = {"precision": {"average": "macro"}, "recall": {"average": "weighted"}, "f1": {"average": "macro"}}
    if name in ("auc",):
        y, scores = y % 2, scores[:, 0]
    if name in ("mse", "mae", "r2"):
        y, scores = RNG.random((100, 2)), RNG.random((100, 2))
    if name in ("precision", "recall", "f1", "confusion_matrix"):
        scores = scores.argmax(axis=1)
    whole = M.get(name, **options.get(name, {})).update(y, scores)
    bounds = shard_bounds(100, 4)
    shards = [M.get(name, **options.get(name, {})).update(y[a:b], scores[a:b]) for a, b in zip(bounds, bounds[1:])]
    merged = shards[0]
    for shard in shards[1:]:
        merged.merge(shard)
    np.testing.assert_allclose(merged.compute(), whole.compute(), rtol=1e-12)
    np.testing.assert_allclose(whole.compute(LocalCommunicator()), whole.compute(), rtol=1e-12)


def test_running_mean_of_losses():
    mean = M.Mean()
    mean.update(dl.tensor(2.0), weight=3).update(4.0, weight=1)
    assert mean.compute() == 2.5


def test_metric_errors_say_what_was_wrong():
    with pytest.raises(ValueError, match="average='binary' needs two classes, found 3"):
        M.f1_score([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="average must be one of"):
        M.precision([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match="undefined with 0 positive and 3 negative"):
        M.roc_auc_score([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        M.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="label 4 is out of range for num_classes=3"):
        M.confusion_matrix([0, 4], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        M.get("acc")
    with pytest.raises(ValueError, match="targets must be class labels"):
        M.accuracy([0.5, 1.0], [0, 1])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_exact_evaluation_over_unpadded_shards_counts_every_sample_once(world):
    """Each rank evaluates its DistributedSampler(pad=False) shard; the summed statistics are the whole set's.

    The padded training sampler would count up to world - 1 samples twice.
    """
    from distdl.data import DataLoader, DistributedSampler, TensorDataset

    y = RNG.integers(0, 3, 101)
    scores = RNG.random((101, 3))
    dataset = TensorDataset(scores, y)
    whole = M.F1Score("macro").update(y, scores).compute()
    per_rank = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False, pad=False)
        metric = M.F1Score("macro")
        for batch_scores, batch_y in DataLoader(dataset, batch_size=16, sampler=sampler):
            metric.update(batch_y, batch_scores)
        per_rank.append(metric)
    total = per_rank[0]
    for metric in per_rank[1:]:
        total.merge(metric)
    assert total.stats["matrix"].sum() == 101
    assert total.compute() == pytest.approx(whole, abs=1e-15)
