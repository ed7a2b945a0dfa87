"""Evaluation metrics that stay exact over a distributed evaluation.

A metric accumulates sufficient statistics (counts, sums, a confusion matrix)
with ``update(y_true, y_pred)`` batch after batch, and turns them into a figure
with ``compute(comm=None)``. Given a communicator, ``compute`` first sums the
statistics over every rank, so with shards that hold each sample once
(``DistributedSampler(..., pad=False)``) the figure over N shards equals the
figure over the whole set, exactly. ``merge`` adds another metric's statistics,
the same sum done in one process. Each metric also has a one-call function form,
``accuracy(y_true, y_pred)``, local unless given a ``comm``.

Inputs are NumPy or CuPy arrays or Tensors. Predictions are labels (integers),
class scores (N, C) (the arg-max is taken), or binary probabilities (N,) or (N, 1)
(compared with ``threshold``).
"""

import numpy as np

from distdl.autograd import Tensor
from distdl.backend import to_device

AVERAGES = ("binary", "micro", "macro", "weighted")


def _numpy(values):
    """A NumPy copy or view of a Tensor, CuPy or NumPy array, or of a list."""
    if isinstance(values, Tensor):
        values = values.data
    return np.asarray(to_device(values, "cpu")) if hasattr(values, "shape") else np.asarray(values)


def _targets(y_true):
    """Class labels as a 1-D int64 array (float 0/1 targets of a BCE loss included)."""
    y = _numpy(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"targets must be labels of shape (N,) or (N, 1), got shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError("targets must be class labels; got non-integer values")
    return y.astype(np.int64)


def _predicted_labels(y_pred, threshold):
    p = _numpy(y_pred)
    if p.dtype.kind != "f":
        return p.reshape(len(p)).astype(np.int64) if p.ndim == 2 and p.shape[1] == 1 else p.astype(np.int64)
    if p.ndim == 2 and p.shape[1] > 1:
        return p.argmax(axis=1)
    return (p.reshape(len(p)) >= threshold).astype(np.int64)


def _same_length(a, b, name):
    if len(a) != len(b):
        raise ValueError(f"{name}: {len(a)} targets but {len(b)} predictions")


def _ratio(num, den):
    """num / den elementwise, 0 where den is 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


class Metric:
    """Base: statistics in ``self.stats`` (name -> float64 array) that add across batches and ranks."""

    name = "metric"

    def __init__(self):
        self.reset()

    def reset(self):
        self.stats = self._empty_stats()
        return self

    def _empty_stats(self):
        raise NotImplementedError

    def update(self, y_true, y_pred):
        raise NotImplementedError

    def _result(self, stats):
        raise NotImplementedError

    def merge(self, other):
        """Add ``other``'s statistics (the same metric, over other samples) to these."""
        for key, value in self._aligned(other.stats).items():
            self.stats[key] = self.stats[key] + value
        return self

    def _aligned(self, other_stats):
        return other_stats

    def _summed_over(self, comm):
        """The statistics summed over every rank of ``comm``, in one allreduce."""
        keys = sorted(self.stats)
        flat = np.concatenate([np.ravel(self.stats[k]).astype(np.float64) for k in keys])
        comm.allreduce(flat, op="sum")
        out, offset = {}, 0
        for key in keys:
            shape = np.shape(self.stats[key])
            size = int(np.prod(shape))
            out[key] = flat[offset:offset + size].reshape(shape)
            offset += size
        return out

    def compute(self, comm=None):
        """The metric over everything updated so far; over every rank's data when ``comm`` is given."""
        return self._result(self.stats if comm is None else self._summed_over(comm))

    def __repr__(self):
        return f"{type(self).__name__}()"


class Mean(Metric):
    """A weighted running mean, for losses: ``update(value, weight=1)``."""

    name = "loss"

    def _empty_stats(self):
        return {"total": np.zeros(()), "weight": np.zeros(())}

    def update(self, value, weight=1):
        self.stats["total"] = self.stats["total"] + float(_numpy(value)) * weight
        self.stats["weight"] = self.stats["weight"] + weight
        return self

    def _result(self, stats):
        return float(_ratio(stats["total"], stats["weight"]))


class Accuracy(Metric):
    """The share of samples whose predicted label equals the target."""

    name = "accuracy"

    def __init__(self, threshold=0.5):
        self.threshold = threshold
        super().__init__()

    def _empty_stats(self):
        return {"correct": np.zeros(()), "count": np.zeros(())}

    def update(self, y_true, y_pred):
        y, p = _targets(y_true), _predicted_labels(y_pred, self.threshold)
        _same_length(y, p, self.name)
        self.stats["correct"] = self.stats["correct"] + np.count_nonzero(y == p)
        self.stats["count"] = self.stats["count"] + len(y)
        return self

    def _result(self, stats):
        return float(_ratio(stats["correct"], stats["count"]))


class TopKAccuracy(Accuracy):
    """The share of samples whose target is among the k highest class scores (ties broken by class order)."""

    def __init__(self, k=5):
        self.k = int(k)
        self.name = f"top{self.k}_accuracy"
        super().__init__()

    def update(self, y_true, scores):
        y, s = _targets(y_true), _numpy(scores)
        if s.ndim != 2 or s.shape[1] < self.k:
            raise ValueError(f"top-{self.k} accuracy needs class scores (N, C) with C >= {self.k}, got {s.shape}")
        _same_length(y, s, self.name)
        target_score = s[np.arange(len(y)), y]
        # the target is in the top k when fewer than k classes beat it (a tie with a lower class index beats it)
        beaten_by = (s > target_score[:, None]).sum(axis=1)
        beaten_by += ((s == target_score[:, None]) & (np.arange(s.shape[1]) < y[:, None])).sum(axis=1)
        self.stats["correct"] = self.stats["correct"] + np.count_nonzero(beaten_by < self.k)
        self.stats["count"] = self.stats["count"] + len(y)
        return self


class ConfusionMatrix(Metric):
    """Counts ``matrix[true, predicted]``; the number of classes grows with the labels seen unless given."""

    name = "confusion_matrix"

    def __init__(self, num_classes=None, threshold=0.5):
        self.num_classes, self.threshold = num_classes, threshold
        super().__init__()

    def _empty_stats(self):
        size = self.num_classes or 0
        return {"matrix": np.zeros((size, size))}

    def _grown(self, matrix, size):
        if size <= len(matrix):
            return matrix
        if self.num_classes is not None:
            raise ValueError(f"label {size - 1} is out of range for num_classes={self.num_classes}")
        grown = np.zeros((size, size))
        grown[:len(matrix), :len(matrix)] = matrix
        return grown

    def update(self, y_true, y_pred):
        y, p = _targets(y_true), _predicted_labels(y_pred, self.threshold)
        _same_length(y, p, self.name)
        if len(y) and min(y.min(), p.min()) < 0:
            raise ValueError("class labels must be non-negative")
        size = max(len(self.stats["matrix"]), int(max(y.max(), p.max())) + 1 if len(y) else 0)
        matrix = self._grown(self.stats["matrix"], size)
        self.stats["matrix"] = matrix + np.bincount(y * size + p, minlength=size * size).reshape(size, size)
        return self

    def _aligned(self, other_stats):
        size = max(len(self.stats["matrix"]), len(other_stats["matrix"]))
        self.stats["matrix"] = self._grown(self.stats["matrix"], size)
        return {"matrix": self._grown(other_stats["matrix"], size)}

    def compute(self, comm=None):
        if comm is not None and self.num_classes is None:  # ranks may have seen different classes
            size = np.array([len(self.stats["matrix"])], np.int64)
            comm.allreduce(size, op="max")
            self.stats["matrix"] = self._grown(self.stats["matrix"], int(size[0]))
        return super().compute(comm)

    def _result(self, stats):
        return stats["matrix"].astype(np.int64)


class _FromConfusion(ConfusionMatrix):
    """Precision, recall and F1 from the confusion matrix, for each ``average``.

    - ``binary``: of class ``pos_label`` only (two classes at most);
    - ``micro``: from the counts summed over classes;
    - ``macro``: the unweighted mean over classes;
    - ``weighted``: the mean weighted by each class's number of true samples.

    Macro and weighted averages run over ``range(num_classes)`` when it is given,
    else over the classes that occur as a target or a prediction. A ratio with a
    zero denominator counts as 0.
    """

    def __init__(self, average="binary", num_classes=None, pos_label=1, threshold=0.5):
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
        self.average, self.pos_label = average, pos_label
        super().__init__(num_classes, threshold)

    def _per_class(self, tp, fp, fn):
        raise NotImplementedError

    def _result(self, stats):
        matrix = stats["matrix"]
        tp = np.diag(matrix)
        fp, fn = matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp
        if self.average == "binary":
            if len(matrix) > 2:
                raise ValueError(f"average='binary' needs two classes, found {len(matrix)}: "
                                 "choose average='macro', 'micro' or 'weighted'")
            if self.pos_label >= len(matrix):
                return 0.0
            c = self.pos_label
            return float(self._per_class(tp[c:c + 1], fp[c:c + 1], fn[c:c + 1])[0])
        if self.average == "micro":
            return float(self._per_class(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
        support = matrix.sum(axis=1)
        present = np.ones(len(matrix), bool) if self.num_classes else (support + matrix.sum(axis=0)) > 0
        scores = self._per_class(tp, fp, fn)[present]
        if not len(scores):
            return 0.0
        if self.average == "macro":
            return float(scores.mean())
        return float(_ratio((scores * support[present]).sum(), support[present].sum()))


class Precision(_FromConfusion):
    name = "precision"

    def _per_class(self, tp, fp, fn):
        return _ratio(tp, tp + fp)


class Recall(_FromConfusion):
    name = "recall"

    def _per_class(self, tp, fp, fn):
        return _ratio(tp, tp + fn)


class F1Score(_FromConfusion):
    name = "f1"

    def _per_class(self, tp, fp, fn):
        return _ratio(2 * tp, 2 * tp + fp + fn)


class ROCAUC(Metric):
    """Area under the ROC curve of a binary problem: the Mann-Whitney statistic, ties counted half.

    The rank statistic needs every score, so ``compute(comm)`` gathers them from
    all ranks (the scores of one evaluation, not of a whole training run).
    """

    name = "auc"

    def _empty_stats(self):
        return {"scores": np.zeros(0), "labels": np.zeros(0)}

    def update(self, y_true, y_score):
        y, s = _targets(y_true), _numpy(y_score).astype(np.float64)
        if s.ndim == 2 and s.shape[1] == 2:
            s = s[:, 1]
        s = s.reshape(len(s)) if s.ndim == 2 and s.shape[1] == 1 else s
        if s.ndim != 1:
            raise ValueError(f"ROC AUC needs one score per sample, got shape {s.shape}")
        _same_length(y, s, self.name)
        if np.any((y != 0) & (y != 1)):
            raise ValueError("ROC AUC is defined here for binary targets 0 and 1")
        self.stats = {"scores": np.concatenate([self.stats["scores"], s]),
                      "labels": np.concatenate([self.stats["labels"], y])}
        return self

    def merge(self, other):
        return self.update(other.stats["labels"], other.stats["scores"])

    def compute(self, comm=None):
        stats = self.stats if comm is None else {key: _gather_ragged(comm, value) for key, value in self.stats.items()}
        return self._result(stats)

    def _result(self, stats):
        scores, positive = stats["scores"], stats["labels"] == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(f"ROC AUC is undefined with {n_pos} positive and {n_neg} negative samples")
        _, tie_group, counts = np.unique(scores, return_inverse=True, return_counts=True)
        mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank, averaged over ties
        rank_sum = mean_rank[tie_group][positive].sum()
        return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _gather_ragged(comm, values):
    """Concatenate every rank's 1-D float64 array, whatever their lengths."""
    return np.concatenate(comm.allgather_ragged(np.ascontiguousarray(values, np.float64)))


class LogLoss(Metric):
    """Mean negative log-probability of the true class; probabilities are clipped to [eps, 1 - eps]."""

    name = "log_loss"

    def __init__(self, eps=1e-15):
        self.eps = eps
        super().__init__()

    def _empty_stats(self):
        return {"total": np.zeros(()), "count": np.zeros(())}

    def update(self, y_true, probabilities):
        y, p = _targets(y_true), _numpy(probabilities).astype(np.float64)
        _same_length(y, p, self.name)
        if p.ndim == 2 and p.shape[1] > 1:
            p_true = p[np.arange(len(y)), y]
        else:
            p = p.reshape(len(p))
            p_true = np.where(y == 1, p, 1 - p)
        self.stats["total"] = self.stats["total"] - np.log(np.clip(p_true, self.eps, 1 - self.eps)).sum()
        self.stats["count"] = self.stats["count"] + len(y)
        return self

    def _result(self, stats):
        return float(_ratio(stats["total"], stats["count"]))


def _regression_pair(y_true, y_pred, name):
    y, p = _numpy(y_true).astype(np.float64), _numpy(y_pred).astype(np.float64)
    if y.shape != p.shape and y.reshape(len(y), -1).shape != p.reshape(len(p), -1).shape:
        raise ValueError(f"{name}: targets of shape {y.shape} and predictions of shape {p.shape} do not match")
    return y.reshape(len(y), -1), p.reshape(len(p), -1)


class MeanSquaredError(Metric):
    name = "mse"

    def _empty_stats(self):
        return {"total": np.zeros(()), "count": np.zeros(())}

    def _error(self, diff):
        return (diff ** 2).sum()

    def update(self, y_true, y_pred):
        y, p = _regression_pair(y_true, y_pred, self.name)
        self.stats["total"] = self.stats["total"] + self._error(y - p)
        self.stats["count"] = self.stats["count"] + y.size
        return self

    def _result(self, stats):
        return float(_ratio(stats["total"], stats["count"]))


class MeanAbsoluteError(MeanSquaredError):
    name = "mae"

    def _error(self, diff):
        return np.abs(diff).sum()


class R2Score(Metric):
    """Coefficient of determination 1 - SS_res / SS_tot, per output then averaged (sklearn's default).

    Kept as float64 sums of y, y^2 and squared residuals, so it reduces across ranks.
    """

    name = "r2"

    def _empty_stats(self):
        return {"count": np.zeros(()), "sum": np.zeros(0), "sum_sq": np.zeros(0), "residual": np.zeros(0)}

    def update(self, y_true, y_pred):
        y, p = _regression_pair(y_true, y_pred, self.name)
        if self.stats["count"] == 0:
            self.stats.update({k: np.zeros(y.shape[1]) for k in ("sum", "sum_sq", "residual")})
        if y.shape[1] != len(self.stats["sum"]):
            raise ValueError(f"r2: {y.shape[1]} outputs now, {len(self.stats['sum'])} before")
        self.stats["count"] = self.stats["count"] + len(y)
        self.stats["sum"] = self.stats["sum"] + y.sum(axis=0)
        self.stats["sum_sq"] = self.stats["sum_sq"] + (y ** 2).sum(axis=0)
        self.stats["residual"] = self.stats["residual"] + ((y - p) ** 2).sum(axis=0)
        return self

    def _result(self, stats):
        n = stats["count"]
        total = stats["sum_sq"] - stats["sum"] ** 2 / n
        return float(np.mean(1 - _ratio(stats["residual"], total)))


_BY_NAME = {
    "accuracy": Accuracy, "precision": Precision, "recall": Recall, "f1": F1Score, "auc": ROCAUC,
    "log_loss": LogLoss, "mse": MeanSquaredError, "mae": MeanAbsoluteError, "r2": R2Score,
    "confusion_matrix": ConfusionMatrix,
}


def get(name, **options):
    """A new metric by name: accuracy, top5_accuracy (any k), precision, recall, f1, auc, log_loss, mse, mae, r2.

    By name, precision, recall and F1 average over the classes (macro), which suits
    any number of classes; a suffix picks another average (``f1_weighted``,
    ``precision_micro``, ``recall_binary``), as does ``average=``.
    """
    if isinstance(name, Metric):
        return name
    if name.startswith("top") and name.endswith("_accuracy") and name[3:-9].isdigit():
        return TopKAccuracy(int(name[3:-9]))
    base, _, average = name.partition("_")
    if base in ("precision", "recall", "f1") and (average in AVERAGES or not average):
        return _BY_NAME[base](**{"average": average or "macro", **options})
    if name not in _BY_NAME:
        raise ValueError(f"unknown metric {name!r}: choose from {', '.join(sorted(_BY_NAME))} or topK_accuracy")
    return _BY_NAME[name](**options)


def accuracy(y_true, y_pred, threshold=0.5, comm=None):
    return Accuracy(threshold).update(y_true, y_pred).compute(comm)


def top_k_accuracy(y_true, scores, k=5, comm=None):
    return TopKAccuracy(k).update(y_true, scores).compute(comm)


def confusion_matrix(y_true, y_pred, num_classes=None, comm=None):
    return ConfusionMatrix(num_classes).update(y_true, y_pred).compute(comm)


def precision(y_true, y_pred, average="binary", num_classes=None, pos_label=1, comm=None):
    return Precision(average, num_classes, pos_label).update(y_true, y_pred).compute(comm)


def recall(y_true, y_pred, average="binary", num_classes=None, pos_label=1, comm=None):
    return Recall(average, num_classes, pos_label).update(y_true, y_pred).compute(comm)


def f1_score(y_true, y_pred, average="binary", num_classes=None, pos_label=1, comm=None):
    return F1Score(average, num_classes, pos_label).update(y_true, y_pred).compute(comm)


def roc_auc_score(y_true, y_score, comm=None):
    return ROCAUC().update(y_true, y_score).compute(comm)


def log_loss(y_true, probabilities, eps=1e-15, comm=None):
    return LogLoss(eps).update(y_true, probabilities).compute(comm)


def mean_squared_error(y_true, y_pred, comm=None):
    return MeanSquaredError().update(y_true, y_pred).compute(comm)


def mean_absolute_error(y_true, y_pred, comm=None):
    return MeanAbsoluteError().update(y_true, y_pred).compute(comm)


def r2_score(y_true, y_pred, comm=None):
    return R2Score().update(y_true, y_pred).compute(comm)
