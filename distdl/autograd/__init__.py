"""The define-by-run autograd engine: Tensor, Function, the backward walk, no_grad."""

from distdl.autograd.function import Function
from distdl.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from distdl.autograd.tensor import Tensor, tensor

__all__ = ["Function", "Tensor", "enable_grad", "is_grad_enabled", "no_grad", "set_grad_enabled", "tensor"]
