"""Gradient utilities, in place on ``.grad``: clearing and clipping, as torch.nn.utils."""

import math

from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of
from distdl.value_checks import check, readable


def _with_grads(parameters):
    parameters = [parameters] if isinstance(parameters, Tensor) else parameters
    return [p for p in parameters if p.grad is not None]


def clear_grads(parameters, set_to_none=True):
    """Drop the gradients, or with ``set_to_none=False`` zero them in place (keeping any bucket views)."""
    for p in parameters:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            p.grad[...] = 0


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their joint norm is at most ``max_norm``; returns the norm before.

    ``norm_type`` is a p >= 1 or ``inf``. A non-finite norm leaves the gradients as they are,
    or raises with ``error_if_nonfinite``. The norm is taken on the gradients' device: on the host
    it is read once and returned as a float; on a GPU it is not read (a read would wait for the
    device): it is returned as a 0-d device array, the scaling is done there, and the non-finite
    error is raised at the step's check (``value_checks.verify``).
    """
    params = _with_grads(parameters)
    if not params:
        return 0.0
    norm_type = float(norm_type)
    xp = xp_of(params[0].grad)
    norms = xp.stack([xp.linalg.norm(p.grad.ravel(), norm_type).astype(xp.float64) for p in params])
    total = norms.max() if norm_type == math.inf else (norms ** norm_type).sum() ** (1 / norm_type)
    if error_if_nonfinite:
        check(total.reshape(1), lambda v: not math.isfinite(v[0]),
              lambda v: f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {v[0]}",
              RuntimeError)
    if not readable(total):
        scale = xp.where(xp.isfinite(total), xp.minimum(max_norm / (total + 1e-6), 1.0), 1.0)
        for p in params:
            p.grad *= scale.astype(p.grad.dtype)
        return total
    total = float(total)
    scale = max_norm / (total + 1e-6)
    if math.isfinite(total) and scale < 1:
        for p in params:
            p.grad *= p.grad.dtype.type(scale)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value]."""
    for p in _with_grads(parameters):
        xp_of(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)
