"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""

from distdl.optim.optimizer import Optimizer, decayed


class SGD(Optimizer):
    """As torch.optim.SGD: g = grad + wd*p; b = momentum*b + (1-dampening)*g (b = g at first);
    g = g + momentum*b with nesterov, else b; p -= lr*g."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *, maximize=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def update(self, param, grad, state, group):
        lr, momentum = group["lr"], group["momentum"]
        grad = decayed(grad, param, group["weight_decay"])
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            if group["nesterov"]:
                param -= lr * (grad + momentum * buf)
                return
            grad = buf
        param -= lr * grad
