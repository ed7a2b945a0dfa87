"""Learning-rate schedules, each a closed form of the epoch (or step) count, so resuming is exact.

Call ``scheduler.step()`` once per epoch (or per iteration, for warmups) after ``optimizer.step()``.
The large-batch recipe of data-parallel training: scale the lr with the global batch and
warm it up linearly, e.g. ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=w), CosineAnnealingLR(opt, T)], [w])``.
"""

import bisect
import math


class LRScheduler:
    """Sets each group's ``lr`` to ``lr_at(epoch, base_lr)``; ``base_lr`` is the group's lr when first scheduled."""

    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, epoch, base_lr):
        raise NotImplementedError

    def step(self):
        self.step_to(self.last_epoch + 1)

    def step_to(self, count):
        """Set each group's lr to that of epoch (or step, or sample) ``count``: the closed form makes it exact.

        The Trainer's ``scheduler_per="sample"`` calls it with the samples seen over all ranks, so the
        lr is the same function of them whatever the world size, across a resume too.
        """
        self.last_epoch = count
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_epoch, base_lr)

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        """Plain numbers and lists: everything but the optimizer."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer" and not callable(v)}

    def load_state_dict(self, state_dict):
        _check_fits(self, state_dict)
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base * gamma ** (number of milestones reached)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """lr = base * gamma ** epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """The linear warmup: lr = base * factor, factor going from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then staying there."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: factors must be in (0, 1] and [0, 1], got {start_factor}, {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        progress = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class SequentialLR(LRScheduler):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on, each counting its own epochs from zero."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: {len(schedulers)} schedulers need {len(schedulers) - 1} milestones, "
                             f"got {len(milestones)}")
        self.schedulers, self.milestones = list(schedulers), list(milestones)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        index = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[index - 1] if index else 0
        return self.schedulers[index].lr_at(epoch - start, base_lr)

    def state_dict(self):
        state = {k: v for k, v in super().state_dict().items() if k != "schedulers"}
        return {**state, "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state_dict):
        _check_fits(self, state_dict)
        if len(state_dict["schedulers"]) != len(self.schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: the state holds {len(state_dict['schedulers'])} "
                             f"schedules, this SequentialLR {len(self.schedulers)}")
        for scheduler, saved in zip(self.schedulers, state_dict["schedulers"]):
            scheduler.load_state_dict(saved)
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "schedulers"})


class LambdaLR(LRScheduler):
    """lr = base * lr_lambda(epoch); the function itself is not part of the state_dict."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return base_lr * self.lr_lambda(epoch)


def _check_fits(scheduler, state_dict):
    """Only the keys ``state_dict()`` gives are taken back, so a crafted checkpoint sets no other attribute."""
    expected = scheduler.state_dict()
    unknown, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
    if unknown or missing:
        raise ValueError(f"{type(scheduler).__name__}.load_state_dict: the state does not fit this schedule "
                         f"(unexpected keys {unknown}, missing keys {missing}); was it saved by another schedule?")
