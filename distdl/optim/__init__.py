"""Optimizers with torch.optim's update rules and hyper-parameter names, and learning-rate schedules."""

from distdl.optim import lr_scheduler
from distdl.optim.adaptive import Adagrad, Adam, AdamW, RMSprop
from distdl.optim.optimizer import Optimizer
from distdl.optim.sgd import SGD

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "lr_scheduler"]
