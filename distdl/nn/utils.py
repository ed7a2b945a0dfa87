"""Gradient utilities, in place on ``.grad``: clearing and clipping, as torch.nn.utils."""

import math

from distdl.autograd.tensor import Tensor
from distdl.backend import xp_of


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
    or raises with ``error_if_nonfinite``.
    """
    params = _with_grads(parameters)
    if not params:
        return 0.0
    norm_type = float(norm_type)
    norms = [float(xp_of(p.grad).linalg.norm(p.grad.ravel(), norm_type)) for p in params]
    total = max(norms) if norm_type == math.inf else sum(n ** norm_type for n in norms) ** (1 / norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {total}")
        return total
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for p in params:
            p.grad *= p.grad.dtype.type(scale)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value]."""
    for p in _with_grads(parameters):
        xp_of(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)
