"""Module: the container of Parameters, buffers and sub-modules that every layer and model is."""

from collections import OrderedDict

import numpy as np

from distdl import backend
from distdl.autograd.tensor import Tensor
from distdl.nn.utils import clear_grads


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable; it requires a gradient unless told otherwise."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models.

    Parameters, buffers and sub-modules are registered by assigning them as
    attributes; their order of assignment is the order of ``named_parameters()``,
    ``state_dict()`` and so of DDP's buckets and of checkpoints.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        """``forward``, with NumPy (or CuPy) array arguments wrapped as constant Tensors without a copy.

        A DataLoader yields arrays; torch users pass tensors, and accepting both is the friendly choice.
        """
        return self.forward(*[_as_input(a) for a in args], **kwargs)

    # ---- registration -----------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning {name!r}")
        if isinstance(value, Parameter):
            if name not in self._parameters:  # a replacement keeps its place in the order, as in torch
                self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            if name not in self._modules:
                self._forget(name)
            self._modules[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                kind = "Parameter" if name in self._parameters else "Module"
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: it holds a {kind} (or None)")
            (self._parameters if name in self._parameters else self._modules)[name] = None
        elif name in self._buffers:
            self._buffers[name] = value if value is None or isinstance(value, Tensor) else Tensor(value)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        self.__dict__.pop(name, None)
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)

    def __getattr__(self, name):  # only called when normal lookup fails
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one such as ``bias=False``)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name, value):
        """Register state that is saved and moved with the module but not trained (e.g. running statistics)."""
        self._forget(name)
        self._buffers[name] = value if value is None or isinstance(value, Tensor) else Tensor(value)

    # ---- traversal --------------------------------------------------------
    def named_modules(self, prefix=""):
        """This module and every descendant, depth first in registration order, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child}" if name else child, m) for child, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def _named_members(self, registry):
        seen = set()
        for prefix, module in self.named_modules():
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self):
        """(qualified name, Parameter) pairs in a stable order; a shared Parameter appears once."""
        return self._named_members("_parameters")

    def parameters(self):
        for _, param in self.named_parameters():
            yield param

    def named_buffers(self):
        return self._named_members("_buffers")

    def buffers(self):
        for _, buf in self.named_buffers():
            yield buf

    def num_parameters(self, trainable_only=False):
        """How many numbers the parameters hold (only those requiring a gradient, if asked)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- modes and gradients ----------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Clear the gradients; ``set_to_none=False`` zeroes them in place (keeping any bucket views)."""
        clear_grads(self.parameters(), set_to_none)

    # ---- state ------------------------------------------------------------
    def _state_items(self):
        """Parameters then persistent buffers of each module, module by module (as torch orders them)."""
        for prefix, module in self.named_modules():
            for registry in (module._parameters, module._buffers):
                for name, value in registry.items():
                    if value is not None:
                        yield (f"{prefix}.{name}" if prefix else name), value

    def state_dict(self):
        """An ordered dict of name -> a copy of the array (NumPy on the CPU, CuPy on a GPU)."""
        return OrderedDict((name, value.data.copy()) for name, value in self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters and buffers in place, converting dtype and device.

        With ``strict`` a missing or unexpected key is an error; a wrong shape always is.
        Returns the (missing, unexpected) key lists.
        """
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict into {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}; "
                "pass strict=False to load the keys that match"
            )
        for name, target in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if shape != target.shape:
                raise ValueError(
                    f"load_state_dict into {type(self).__name__}: {name!r} has shape {shape} in the state dict "
                    f"but {target.shape} in the module"
                )
            target.data[...] = backend.to_device(value, backend.device_of(target.data))
        return missing, unexpected

    def to(self, target):
        """Move every parameter and buffer to a device ("cpu", "cuda:N") or floating dtype, in place.

        The Parameter objects stay the same (an optimizer holding them keeps working);
        integer buffers such as ``num_batches_tracked`` keep their dtype.
        """
        device, dtype = _device_or_dtype(target)
        for _, value in self._state_items():
            data = value.data
            if device is not None:
                data = backend.to_device(data, device)
            elif data.dtype.kind == "f":
                data = data.astype(dtype, copy=False)
            value.data = data
            if value.grad is not None:
                value.grad = backend.to_device(value.grad, device) if device is not None else value.grad.astype(dtype)
        return self

    def _factory(self, device=None, dtype=None):
        """torch's ``device=``/``dtype=`` layer arguments: made in the default dtype on the CPU, then moved."""
        if dtype is not None:
            self.to(dtype)
        if device is not None:
            self.to(device)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=None):
        return self.to("cuda" if index is None else f"cuda:{index}")

    def check_input(self, input, expected, what, axis=1, ndims=None):
        """Raise an error naming this layer when ``input.shape[axis] != expected`` or its rank is not in ``ndims``."""
        rank_ok = input.ndim in ndims if ndims else input.ndim > (axis if axis >= 0 else -axis - 1)
        if not rank_ok or input.shape[axis] != expected:
            ranks = " or ".join(f"{n}-d" for n in ndims) + " " if ndims else ""
            raise ValueError(
                f"{self!r}: expected a {ranks}input with {expected} {what} in axis {axis}, got shape {tuple(input.shape)}"
            )

    # ---- printing ---------------------------------------------------------
    def extra_repr(self):
        """The layer's settings, shown inside its parentheses."""
        return ""

    def __repr__(self):
        lines = [f"({name}): " + _indent(repr(module)) for name, module in self.named_children()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        extra = [self.extra_repr()] if self.extra_repr() else []
        return f"{type(self).__name__}(\n  " + "\n  ".join(extra + lines) + "\n)"


def _as_input(value):
    if isinstance(value, Tensor):  # the usual case, and the cheapest test
        return value
    if isinstance(value, np.ndarray) or backend.is_gpu_array(value):
        return Tensor._from_op(value, None, 0)
    return value


def _indent(text):
    return text.replace("\n", "\n  ")


def _device_or_dtype(target):
    """(device, None) or (None, dtype) for a ``to()`` argument."""
    if isinstance(target, str):
        try:
            return None, np.dtype(target)
        except TypeError:
            backend.parse_device(target)  # reports an unknown device name
            return target, None
    if isinstance(target, int) and not isinstance(target, bool):
        return target, None
    dtype = np.dtype(target)
    if dtype.kind != "f":
        raise TypeError(f"Module.to: only floating dtypes can be converted to, got {dtype}")
    return None, dtype
