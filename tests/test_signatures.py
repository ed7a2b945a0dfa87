"""Layer, loss, functional and optimizer signatures against a stored copy of torch 2.13's (no torch needed).

A torch user's positional call must mean the same here. Every difference is listed
in MEANT with its reason; anything else (a parameter out of order, a default that
differs, a torch name missing) fails the test and names the parameter.
"""

import inspect

import pytest

from distdl import functional as F
from distdl import nn, optim

TORCH = {
    "nn.Linear": "in_features, out_features, bias=True, device=None, dtype=None",
    "nn.Conv2d": "in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True, "
                 "padding_mode='zeros', device=None, dtype=None",
    "nn.MaxPool2d": "kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False",
    "nn.AvgPool2d": "kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, "
                    "divisor_override=None",
    "nn.AdaptiveAvgPool2d": "output_size",
    "nn.Flatten": "start_dim=1, end_dim=-1",
    "nn.Identity": "*args, **kwargs",
    "nn.Dropout": "p=0.5, inplace=False",
    "nn.Embedding": "num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, "
                    "scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None",
    "nn.BatchNorm1d": "num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, device=None, "
                      "dtype=None, *, bias=True",
    "nn.BatchNorm2d": "num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, device=None, "
                      "dtype=None, *, bias=True",
    "nn.LayerNorm": "normalized_shape, eps=1e-05, elementwise_affine=True, bias=True, device=None, dtype=None",
    "nn.RNN": "input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False, "
              "dropout=0.0, bidirectional=False, device=None, dtype=None",
    "nn.LSTM": "input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, "
               "bidirectional=False, proj_size=0, device=None, dtype=None",
    "nn.GRU": "input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, "
              "bidirectional=False, device=None, dtype=None",
    "nn.RNNCell": "input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None",
    "nn.LSTMCell": "input_size, hidden_size, bias=True, device=None, dtype=None",
    "nn.GRUCell": "input_size, hidden_size, bias=True, device=None, dtype=None",
    "nn.ReLU": "inplace=False",
    "nn.LeakyReLU": "negative_slope=0.01, inplace=False",
    "nn.Sigmoid": "",
    "nn.Tanh": "",
    "nn.GELU": "approximate='none'",
    "nn.Softmax": "dim=None",
    "nn.LogSoftmax": "dim=None",
    "nn.Sequential": "*args",
    "nn.ModuleList": "modules=None",
    "nn.MSELoss": "size_average=None, reduce=None, reduction='mean'",
    "nn.L1Loss": "size_average=None, reduce=None, reduction='mean'",
    "nn.BCELoss": "weight=None, size_average=None, reduce=None, reduction='mean'",
    "nn.BCEWithLogitsLoss": "weight=None, size_average=None, reduce=None, reduction='mean', pos_weight=None",
    "nn.CrossEntropyLoss": "weight=None, size_average=None, ignore_index=-100, reduce=None, reduction='mean', "
                           "label_smoothing=0.0",
    "nn.NLLLoss": "weight=None, size_average=None, ignore_index=-100, reduce=None, reduction='mean'",
    "F.linear": "input, weight, bias=None",
    "F.conv2d": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "F.max_pool2d": "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False",
    "F.avg_pool2d": "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, "
                    "divisor_override=None",
    "F.adaptive_avg_pool2d": "input, output_size",
    "F.dropout": "input, p=0.5, training=True, inplace=False",
    "F.embedding": "input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, "
                   "sparse=False",
    "F.batch_norm": "input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, "
                    "eps=1e-05",
    "F.layer_norm": "input, normalized_shape, weight=None, bias=None, eps=1e-05",
    "F.relu": "input, inplace=False",
    "F.leaky_relu": "input, negative_slope=0.01, inplace=False",
    "F.gelu": "input, approximate='none'",
    "F.sigmoid": "input",
    "F.tanh": "input",
    "F.softmax": "input, dim=None, _stacklevel=3, dtype=None",
    "F.log_softmax": "input, dim=None, _stacklevel=3, dtype=None",
    "F.cross_entropy": "input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, "
                       "reduction='mean', label_smoothing=0.0",
    "F.nll_loss": "input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction='mean'",
    "F.mse_loss": "input, target, size_average=None, reduce=None, reduction='mean', weight=None",
    "F.l1_loss": "input, target, size_average=None, reduce=None, reduction='mean', weight=None",
    "F.binary_cross_entropy": "input, target, weight=None, size_average=None, reduce=None, reduction='mean'",
    "F.binary_cross_entropy_with_logits": "input, target, weight=None, size_average=None, reduce=None, "
                                          "reduction='mean', pos_weight=None",
    "optim.SGD": "params, lr=0.001, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False, "
                 "foreach=None, differentiable=False, fused=None",
    "optim.Adam": "params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, *, foreach=None, "
                  "maximize=False, capturable=False, differentiable=False, fused=None, decoupled_weight_decay=False",
    "optim.AdamW": "params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, *, "
                   "maximize=False, foreach=None, capturable=False, differentiable=False, fused=None",
    "optim.RMSprop": "params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0, centered=False, "
                     "capturable=False, foreach=None, maximize=False, differentiable=False",
    "optim.Adagrad": "params, lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, "
                     "foreach=None, *, maximize=False, differentiable=False, fused=None",
}

_TORCH_KERNELS = {"foreach", "fused", "capturable", "differentiable"}  # choices of torch's kernels, not of the maths
MEANT = {
    "nn.Embedding": {"missing": {"max_norm", "norm_type", "scale_grad_by_freq", "sparse", "_weight", "_freeze"}},
    "nn.LSTM": {"missing": {"proj_size"}},  # no projected LSTM
    # torch 2.13's weighted regression losses (a mean divided by the weights' sum): not supported
    "F.mse_loss": {"missing": {"weight"}}, "F.l1_loss": {"missing": {"weight"}},
    "F.embedding": {"missing": {"max_norm", "norm_type", "scale_grad_by_freq", "sparse"}},
    "F.softmax": {"missing": {"_stacklevel", "dtype"}, "defaults": {"dim": -1}, "extra": {"axis"}},
    "F.log_softmax": {"missing": {"_stacklevel", "dtype"}, "defaults": {"dim": -1}, "extra": {"axis"}},
    # torch's dim=None picks a dimension by the input's rank, with a deprecation warning; here it is the last one
    "nn.Softmax": {"defaults": {"dim": -1}, "extra": {"axis"}},
    "nn.LogSoftmax": {"defaults": {"dim": -1}, "extra": {"axis"}},
    "optim.SGD": {"missing": _TORCH_KERNELS},
    "optim.Adam": {"missing": _TORCH_KERNELS},
    "optim.AdamW": {"missing": _TORCH_KERNELS},
    "optim.RMSprop": {"missing": _TORCH_KERNELS},
    "optim.Adagrad": {"missing": _TORCH_KERNELS},
}


def _parameters(signature):
    """(name, kind, default) of each parameter, ``self`` left out."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


def _torch(text):
    return _parameters(inspect.signature(eval(f"lambda {text}: None")))  # noqa: S307 (our own constant text)


def _ours(name):
    module, attribute = name.split(".")
    value = getattr({"nn": nn, "optim": optim, "F": F}[module], attribute)
    return _parameters(inspect.signature(value if module == "F" else value.__init__))


def _shape(params):
    """Variadic parameters compare by kind only: their names are nobody's API."""
    return [("*" if kind == inspect.Parameter.VAR_POSITIONAL else "**" if kind == inspect.Parameter.VAR_KEYWORD
             else name, kind, default) for name, kind, default in params]


@pytest.mark.parametrize("name", sorted(TORCH))
def test_signature_matches_torch_but_for_the_listed_differences(name):
    meant = MEANT.get(name, {})
    missing, extra, defaults = meant.get("missing", set()), meant.get("extra", set()), meant.get("defaults", {})
    theirs = [(n, k, defaults.get(n, d)) for n, k, d in _torch(TORCH[name]) if n not in missing]
    ours = [p for p in _ours(name) if p[0] not in extra]
    assert not {n for n, _, _ in _ours(name)} & missing, f"{name}: listed as missing but present: update MEANT"
    if name.startswith("optim."):  # which options are keyword-only varies between torch's optimizers and versions
        theirs, ours = ([(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, d) for n, _, d in ps] for ps in (theirs, ours))
    assert _shape(ours) == _shape(theirs), (
        f"{name}: ours {[(n, d) for n, _, d in ours]} differs from torch's {[(n, d) for n, _, d in theirs]}")


def test_every_documented_layer_loss_and_optimizer_is_compared():
    names = {f"nn.{n}" for n in nn.__all__ if n[0].isupper() and n not in ("Module", "Parameter")}
    names |= {f"optim.{n}" for n in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")}
    assert names <= set(TORCH), f"not compared with torch: {sorted(names - set(TORCH))}"


def test_the_stored_copy_is_torchs_own():
    """Where torch 2.13 is installed, each stored signature that it can introspect equals its own."""
    torch = pytest.importorskip("torch")
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"the stored copy is of torch 2.13, this is {torch.__version__}")
    import torch.nn.functional as torch_F
    for name, text in TORCH.items():
        module, attribute = name.split(".")
        value = getattr({"nn": torch.nn, "optim": torch.optim, "F": torch_F}[module], attribute)
        try:
            signature = inspect.signature(value if module == "F" else value.__init__)
        except ValueError:  # a builtin without a signature: the documented one is stored
            continue
        real = _parameters(signature)
        if [kind for _, kind, _ in real] in ([inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD],):
            continue  # declared (*args, **kwargs), as RNN and Sigmoid: the documented signature is stored
        assert _shape(real) == _shape(_torch(text)), f"{name}: torch has {signature}"
