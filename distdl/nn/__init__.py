"""Layers, models and losses: Module with its Parameters and buffers, named and initialised as torch.nn."""

from distdl.nn import init, utils
from distdl.nn.activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from distdl.nn.container import ModuleList, Sequential
from distdl.nn.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from distdl.nn.dropout import Dropout
from distdl.nn.embedding import Embedding
from distdl.nn.linear import Flatten, Identity, Linear
from distdl.nn.loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, NLLLoss
from distdl.nn.module import Module, Parameter
from distdl.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from distdl.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "GRU", "GRUCell", "Identity", "L1Loss", "LSTM",
    "LSTMCell", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MSELoss", "MaxPool2d", "Module", "ModuleList",
    "NLLLoss", "Parameter", "RNN", "RNNCell", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh", "init", "utils",
]


def __getattr__(name):
    """``nn.SyncBatchNorm`` lives in distdl.parallel (it needs the communicator); import it on first use."""
    if name == "SyncBatchNorm":
        from distdl.parallel.sync_batchnorm import SyncBatchNorm

        return SyncBatchNorm
    raise AttributeError(f"module 'distdl.nn' has no attribute {name!r}")
