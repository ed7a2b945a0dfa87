"""Optimizer: parameter groups with their own hyper-parameters, per-parameter state, and its state_dict."""

import numbers

from distdl import backend
from distdl.autograd.tensor import HookHandle, Tensor
from distdl.nn.utils import clear_grads

_step_post_hooks = {}  # called after every optimizer's step: the step timing of any loop sees where it ends


def register_optimizer_step_post_hook(hook):
    """Call ``hook(optimizer, args, kwargs)`` after the ``step()`` of every optimizer, as torch's of that name.

    Returns a handle whose ``remove()`` unregisters it.
    """
    handle = HookHandle(_step_post_hooks)
    _step_post_hooks[handle.id] = hook
    return handle


class Optimizer:
    """Base class: subclasses define ``defaults`` handling in ``__init__`` and ``update(param, grad, state, group)``.

    ``params`` is an iterable of Tensors, or of dicts ``{"params": [...], "lr": ...}``
    giving each group its own hyper-parameters (the rest come from the defaults).
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__} optimizes Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__} can only optimize leaf tensors (parameters), not results of ops")
            if id(p) in known:
                raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
            known.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyper-parameters {sorted(unknown)} in a parameter group")
        self.param_groups.append({**self.defaults, **group, "params": params})

    def zero_grad(self, set_to_none=True):
        """Clear the gradients; ``set_to_none=False`` zeroes them in place (keeping any bucket views)."""
        clear_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self):
        """Update every parameter that has a gradient, in place (ascending it with ``maximize``, as torch)."""
        state, update = self.state, self.update
        for group in self.param_groups:
            maximize = group.get("maximize")
            for p in group["params"]:
                grad = p.grad
                if grad is not None:
                    entry = state.get(p)
                    if entry is None:
                        entry = state[p] = {}
                    update(p.data, -grad if maximize else grad, entry, group)
        for hook in list(_step_post_hooks.values()):
            hook(self, (), {})

    def update(self, param, grad, state, group):
        raise NotImplementedError

    def state_dict(self):
        """Hyper-parameters and per-parameter state as plain numbers and arrays (copies), parameters by index."""
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
            for i, p in zip(ids, group["params"]):
                if p in self.state:
                    state[i] = {k: _copy(v) for k, v in self.state[p].items()}
            index += len(ids)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state; arrays move to each parameter's device and dtype."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved groups hold "
                f"{[len(s['params']) for s in saved_groups]} parameters but this optimizer's hold "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        state = {int(k): v for k, v in state_dict["state"].items()}
        self.state = {}
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: _plain(v) for k, v in saved.items() if k != "params"})
            for i, p in zip(saved["params"], group["params"]):
                if i in state:
                    self.state[p] = {k: _like(v, p) for k, v in state[i].items()}


def _copy(value):
    return value.copy() if getattr(value, "ndim", 0) else value


def _plain(value):
    """Hyper-parameters come back as saved; lists (e.g. betas from JSON) become tuples."""
    return tuple(value) if isinstance(value, list) else value


def _like(value, param):
    """A state entry onto the parameter's device and dtype; numbers (the step count) stay numbers."""
    if isinstance(value, numbers.Number) or getattr(value, "ndim", 1) == 0:
        return value.item() if hasattr(value, "item") else value
    array = backend.to_device(value, backend.device_of(param.data))
    xp = backend.xp_of(param.data)
    if array.shape != param.shape:
        raise ValueError(f"optimizer state of shape {array.shape} does not fit a parameter of shape {param.shape}")
    return xp.asarray(array, dtype=param.dtype).copy()


def decayed(grad, param, weight_decay):
    """The gradient of loss + weight_decay/2 * |param|^2 (L2 regularisation), a new array only when needed."""
    return grad + weight_decay * param if weight_decay else grad
