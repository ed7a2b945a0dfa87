"""Losses as fused, numerically stable ops, with torch.nn.functional's names and ``reduction``."""

import numpy as np

from distdl.autograd.function import Function
from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.functional.activation import _log_softmax, stable_sigmoid
from distdl.value_checks import check, readable

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, name):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _constant(target, like, name):
    """The target's array; targets of these losses are constants, not differentiated."""
    if isinstance(target, Tensor):
        if target.requires_grad:
            raise ValueError(f"{name}: the target is treated as a constant; pass target.detach()")
        return target.data
    return xp_of(like.data).asarray(target)


def _rows(x):
    """(N, C, d1, ...) -> (N*d1*..., C): one row of class scores per prediction."""
    if x.ndim == 2:
        return x
    return xp_of(x).moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _unrows(rows, shape):
    if len(shape) == 2:
        return rows
    return xp_of(rows).moveaxis(rows.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1)


def _class_targets(input, target, name, ignore_index):
    """Validate integer class targets: shape (N, d1, ...), values in [0, C) or ``ignore_index``.

    Returns the flat targets and the mask of rows to count, or None when every row counts (known on
    the host; on a device the mask is kept, as knowing would mean a read). The range is checked at
    once on the host, once per step on a device (value_checks), where the mask is always made.
    """
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"{name}: input of shape {input.shape} needs class-index targets of shape {expected}, "
            f"got {target.shape}"
        )
    classes = input.shape[1]
    flat = target.reshape(-1)
    if not flat.size:
        return flat, None

    def out_of_range(low, high):
        return f"{name}: target class indices must lie in [0, {classes}), got values from {low} to {high}"

    if readable(flat):  # the host reads for free: the range first, a mask only where a row is ignored
        valid = None
        low, high = int(flat.min()), int(flat.max())
        if low <= ignore_index <= high:
            valid = flat != ignore_index
            picked = flat[valid]
            low, high = (int(picked.min()), int(picked.max())) if picked.size else (0, 0)
        if low < 0 or high >= classes:
            raise IndexError(out_of_range(low, high))
        return flat, valid
    xp = xp_of(flat)
    wide = flat.astype(xp.int64, copy=False)  # room for ignore_index (-100) beside unsigned targets
    ignored = wide == ignore_index
    limits = np.iinfo(np.int64)
    figures = xp.stack([xp.where(ignored, limits.max, wide).min(), xp.where(ignored, limits.min, wide).max()])
    check(figures, lambda v: v[0] < 0 or v[1] >= classes, lambda v: out_of_range(*v), IndexError)
    return flat % classes, ~ignored  # until the step's check raises, a bad label wraps around, as CuPy's indexing


def _safe_targets(target, valid):
    """Targets with ignored rows pointed at class 0 (their loss is masked out)."""
    return target if valid is None else xp_of(target).where(valid, target, 0)


def _row_weights(safe, valid, weight, dtype):
    """Each row's class weight w[target] (0 where ignored), or None when no weights and no row is ignored."""
    if weight is None:
        return None if valid is None else valid.astype(dtype)
    picked = weight[safe]
    return picked if valid is None else picked * valid


def _mean_divisor(row_weight, rows):
    """torch's weighted mean divides by the sum of the counted rows' class weights (by their count without).

    On a device the sum stays there (a 0-d array): reading it would wait for the device.
    """
    if row_weight is None:
        return rows
    total = row_weight.sum()
    return float(total) if readable(total) else total


def _reduce_rows(loss_rows, reduction, count, out_shape):
    """Reduce per-prediction losses; returns the value and the factor that scales each row's gradient."""
    if reduction == "none":
        return loss_rows.reshape(out_shape), None
    total = loss_rows.sum()
    if reduction == "sum":
        return total, 1
    if isinstance(count, (int, float)):
        scale = 1 / count if count else float("nan")  # every row ignored: the mean is undefined, as in PyTorch
    else:  # a device scalar, not read: 1 / 0 is inf there, and the mean over no row (0 x inf) NaN alike
        with np.errstate(divide="ignore"):
            scale = 1 / count
    return total * scale, scale


class CrossEntropy(Function):
    """Softmax cross-entropy from logits as -sum_c q_c log p_c, q the (weighted, smoothed) target distribution.

    The gradient is p * sum_c q_c - q, which is p - q when q sums to one (no class weights).
    """

    def forward(self, logits, *, target, valid, weight, probabilities, smoothing, reduction):
        xp = xp_of(logits)
        rows = _rows(logits)
        m, classes = rows.shape
        logp = _log_softmax(rows, axis=1)
        if probabilities:
            q = _rows(target).astype(logp.dtype, copy=False)
            if smoothing:
                q = q * (1 - smoothing) + smoothing / classes
            if weight is not None:
                q = q * weight
            loss, count = -(q * logp).sum(axis=1), m  # torch: the mean is over rows, weighted or not
            self.q = q
        else:
            safe = _safe_targets(target, valid)
            row_weight = _row_weights(safe, valid, weight, logp.dtype)
            loss = logp[xp.arange(m), safe] * -(1 - smoothing)
            if weight is not None:
                loss *= weight[safe]
            if smoothing:
                spread = logp.sum(axis=1) if weight is None else logp @ weight
                loss -= (smoothing / classes) * spread
            if valid is not None:
                loss *= valid
            count = _mean_divisor(row_weight, m)
            self.safe, self.valid, self.weight = safe, valid, weight
        out, self.scale = _reduce_rows(loss, reduction, count, logits.shape[:1] + logits.shape[2:])
        self.save_for_backward(logp)
        self.shape, self.probabilities, self.smoothing = logits.shape, probabilities, smoothing
        return xp.asarray(out, dtype=logits.dtype)

    def backward(self, g):
        (logp,) = self.saved
        xp = xp_of(g)
        grad = xp.exp(logp)
        if self.probabilities:
            grad *= self.q.sum(axis=1, keepdims=True)
            grad -= self.q
        else:
            rows, classes = logp.shape
            weight, smoothing = self.weight, self.smoothing
            if weight is not None:  # sum_c q_c = (1 - e) w[target] + e/C sum(w)
                grad *= ((1 - smoothing) * weight[self.safe] + (smoothing / classes) * weight.sum())[:, None]
            if smoothing:
                grad -= (smoothing / classes) * (1 if weight is None else weight)
            grad[xp.arange(rows), self.safe] -= (1 - smoothing) * (1 if weight is None else weight[self.safe])
            if self.valid is not None:  # ignored rows get no gradient
                grad *= self.valid[:, None]
        grad *= g.reshape(-1, 1) if self.scale is None else g * self.scale
        return _unrows(grad, self.shape)


class NLLLoss(Function):
    def forward(self, logp, *, target, valid, weight, reduction):
        xp = xp_of(logp)
        rows = _rows(logp)
        safe = _safe_targets(target, valid)
        row_weight = _row_weights(safe, valid, weight, logp.dtype)
        loss = -rows[xp.arange(rows.shape[0]), safe]
        if row_weight is not None:
            loss *= row_weight
        out, self.scale = _reduce_rows(loss, reduction, _mean_divisor(row_weight, rows.shape[0]),
                                       logp.shape[:1] + logp.shape[2:])
        self.safe, self.row_weight, self.shape, self.rows_shape = safe, row_weight, logp.shape, rows.shape
        return xp.asarray(out, dtype=logp.dtype)

    def backward(self, g):
        xp = xp_of(g)
        grad = xp.zeros(self.rows_shape, g.dtype)
        scale = -(g.reshape(-1) if self.scale is None else g * self.scale)
        if self.row_weight is not None:
            scale = scale * self.row_weight
        grad[xp.arange(self.rows_shape[0]), self.safe] = scale
        return _unrows(grad, self.shape)


def legacy_reduction(size_average, reduce, reduction):
    """torch's deprecated ``size_average``/``reduce`` pair as a ``reduction``; kept for torch's positional order."""
    if size_average is None and reduce is None:
        return reduction
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _class_weights(weight, input, name):
    """The class weights as a constant array of the input's dtype, one per class, or None."""
    if weight is None:
        return None
    values = weight.data if isinstance(weight, Tensor) else xp_of(input.data).asarray(weight)
    if values.shape != (input.shape[1],):
        raise ValueError(f"{name}: weight must hold one number per class, shape ({input.shape[1]},), "
                         f"got shape {values.shape}")
    return values.astype(input.dtype, copy=False)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """Cross-entropy from logits (N, C) or (N, C, d1, ...), as torch.nn.functional.cross_entropy.

    ``target`` holds class indices (N, d1, ...) or class probabilities shaped like
    ``input``. ``weight`` (C,) rescales each class; with 'mean', index targets then divide by
    the sum of the counted rows' weights (rows equal to ``ignore_index`` do not count), as torch.
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, "cross_entropy")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.ndim < 2:
        raise ValueError(f"cross_entropy: expects logits of shape (N, C, ...), got {input.shape}")
    target = _constant(target, input, "cross_entropy")
    weight = _class_weights(weight, input, "cross_entropy")
    probabilities = target.dtype.kind not in "iu"
    if not probabilities:
        target, valid = _class_targets(input, target, "cross_entropy", ignore_index)
    elif target.shape == input.shape:
        valid = None
    else:
        raise ValueError(
            f"cross_entropy: target must hold class indices (integer dtype, shape {input.shape[:1] + input.shape[2:]}) "
            f"or class probabilities (shape {input.shape}), got dtype {target.dtype} shape {target.shape}"
        )
    return CrossEntropy.apply(input, target=target, valid=valid, weight=weight, probabilities=probabilities,
                              smoothing=label_smoothing, reduction=reduction)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C, ...) at integer class targets, optionally weighted."""
    reduction = legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, "nll_loss")
    target = _constant(target, input, "nll_loss")
    if target.dtype.kind not in "iu":
        raise TypeError(f"nll_loss: target must hold integer class indices, got dtype {target.dtype}")
    flat, valid = _class_targets(input, target, "nll_loss", ignore_index)
    return NLLLoss.apply(input, target=flat, valid=valid, weight=_class_weights(weight, input, "nll_loss"),
                         reduction=reduction)


class PointwiseLoss(Function):
    """A loss summed over matching elements: subclasses give the per-element value and derivatives.

    ``weight`` (broadcast against the input) rescales each element's loss, as torch's BCE ``weight``.
    """

    def forward(self, input, target, *, reduction, weight=None, **options):
        loss, self.d_input, self.d_target = self.pointwise(input, target, **options)
        if weight is not None:
            loss = loss * weight
            self.d_input = self.d_input * weight
        self.shape = input.shape
        if reduction == "none":
            self.scale = None
            return loss
        self.scale = 1 if reduction == "sum" else 1 / max(loss.size, 1)
        return xp_of(loss).asarray(loss.sum() * self.scale, dtype=loss.dtype)

    def backward(self, g):
        factor = g if self.scale is None else g * self.scale
        gi = self.d_input * factor if self.needs_input_grad[0] else None
        gt = self.d_target * factor if len(self.needs_input_grad) > 1 and self.needs_input_grad[1] else None
        return gi, gt


class MSE(PointwiseLoss):
    def pointwise(self, x, t):
        diff = x - t
        return diff * diff, 2 * diff, -2 * diff


class L1(PointwiseLoss):
    def pointwise(self, x, t):
        diff = x - t
        sign = xp_of(diff).sign(diff)
        return xp_of(diff).abs(diff), sign, -sign


class BCE(PointwiseLoss):
    """As PyTorch: each log clamped at -100, the gradient's denominator at 1e-12. In place where it can be:
    the loss is elementwise passes over the whole batch (an autoencoder's output), 2.5x faster so."""

    def pointwise(self, p, t):
        xp = xp_of(p)
        with np.errstate(divide="ignore"):  # log(0) is clamped below; CuPy does not warn
            log_p = xp.log(p)
        log_1mp = _log_one_minus(p)
        xp.maximum(log_p, -100, out=log_p)
        xp.maximum(log_1mp, -100, out=log_1mp)
        loss = xp.subtract(log_p, log_1mp, out=log_p)  # t log p + (1 - t) log(1 - p), as log(1 - p) + t (...)
        loss *= t
        loss += log_1mp
        xp.negative(loss, out=loss)
        spread = xp.subtract(1, p, out=log_1mp)  # p (1 - p): 1 - p is exact above 1/2, p - p^2 would cancel
        spread *= p
        xp.maximum(spread, 1e-12, out=spread)
        grad = xp.subtract(p, t)
        grad /= spread
        return loss, grad, None


def _log_one_minus(p):
    """log(1 - p) to a few ulps as log(u) - ((u - 1) + p) / u with u = 1 - p (the correction is the rounding of
    u; Goldberg's log1p): one log, where NumPy's log1p takes 5x as long. u is kept from 0 by the smallest
    subnormal, so that p = 1 gives a log below -100 (clamped as log(0) is) and no 0 / 0."""
    xp = xp_of(p)
    u = xp.subtract(1, p)
    xp.maximum(u, np.finfo(u.dtype).smallest_subnormal, out=u)
    correction = xp.subtract(u, 1)
    correction += p
    correction /= u
    log = xp.log(u, out=u)
    log -= correction
    return log


class BCEWithLogits(PointwiseLoss):
    """pos_weight t softplus(-x) + (1 - t) softplus(x), softplus(x) = max(x, 0) + log(1 + exp(-|x|)): finite for any logit."""

    def pointwise(self, x, t, pos_weight=None):
        xp = xp_of(x)
        softplus = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))
        if pos_weight is None:
            return softplus - x * t, stable_sigmoid(x) - t, None
        positive = pos_weight * t
        loss = positive * (softplus - x) + (1 - t) * softplus
        sigmoid = stable_sigmoid(x)
        return loss, positive * (sigmoid - 1) + (1 - t) * sigmoid, None


def _constant_like(value, input, name, what):
    """An optional constant (a class or element weight) as an array of the input's dtype."""
    if value is None:
        return None
    values = value.data if isinstance(value, Tensor) else xp_of(input.data).asarray(value)
    try:
        np.broadcast_shapes(values.shape, input.shape)
    except ValueError:
        raise ValueError(f"{name}: {what} of shape {values.shape} does not broadcast against the input's "
                         f"shape {input.shape}") from None
    return values.astype(input.dtype, copy=False)


def _pointwise(cls, name, input, target, reduction, differentiable_target, weight=None, **options):
    _check_reduction(reduction, name)
    if isinstance(target, Tensor) and target.requires_grad:
        if not differentiable_target:
            raise ValueError(f"{name}: the target is treated as a constant; pass target.detach()")
    else:  # a constant target (an array, a number, a Tensor outside the graph) takes the input's dtype
        values = target.data if isinstance(target, Tensor) else xp_of(input.data).asarray(target)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"{name}: target must hold numbers, got dtype {values.dtype}")
        target = Tensor._from_op(values.astype(input.dtype, copy=False), None, 0)
    if target.shape != input.shape:
        raise ValueError(
            f"{name}: input shape {input.shape} and target shape {target.shape} differ; reshape the target "
            f"(broadcasting here is almost always a bug)"
        )
    return cls.apply(input, target, reduction=reduction, weight=_constant_like(weight, input, name, "weight"),
                     **options)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    return _pointwise(MSE, "mse_loss", input, target, legacy_reduction(size_average, reduce, reduction),
                      differentiable_target=True)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    return _pointwise(L1, "l1_loss", input, target, legacy_reduction(size_average, reduce, reduction),
                      differentiable_target=True)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    """BCE of probabilities in [0, 1], each element's loss times ``weight``; for logits use the ``_with_logits`` form."""
    if input.numel():  # read at once on the host, once per step on a device (value_checks)
        check(xp_of(input.data).stack([input.data.min(), input.data.max()]), lambda v: v[0] < 0 or v[1] > 1,
              lambda v: f"binary_cross_entropy: input must hold probabilities in [0, 1], got values from {v[0]} to "
                        f"{v[1]}; for raw scores use binary_cross_entropy_with_logits")
    return _pointwise(BCE, "binary_cross_entropy", input, target, legacy_reduction(size_average, reduce, reduction),
                      differentiable_target=False, weight=weight)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """BCE of logits; ``pos_weight`` (broadcast, usually one per class) weighs the positive term, as torch."""
    name = "binary_cross_entropy_with_logits"
    return _pointwise(BCEWithLogits, name, input, target, legacy_reduction(size_average, reduce, reduction),
                      differentiable_target=False, weight=weight,
                      pos_weight=_constant_like(pos_weight, input, name, "pos_weight"))
