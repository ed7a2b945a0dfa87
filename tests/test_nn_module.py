"""Module: registration, traversal order, modes, state_dict round trips and their errors, dtype moves, repr."""

from collections import OrderedDict

import numpy as np
import pytest

import distdl as dl
from distdl import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.register_buffer("steps", np.zeros((), np.int64))
        self.note = "plain attributes are not registered"

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(8, 3)
        self.tied = self.head  # the same module twice: its parameters are listed once


def test_registration_order_and_names():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    # as torch: module by module, depth first, each module's own parameters before its children's
    assert names == ["block.scale", "block.conv.weight", "block.conv.bias", "block.bn.weight", "block.bn.bias",
                     "head.weight", "head.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "block.steps", "block.bn.running_mean", "block.bn.running_var", "block.bn.num_batches_tracked"]
    assert [type(m).__name__ for m in net.modules()] == ["Net", "Block", "Conv2d", "BatchNorm2d", "Linear"]
    assert [n for n, _ in net.named_children()] == ["block", "head", "tied"]
    assert net.num_parameters() == 2 * 9 + 2 + 2 + 2 + 1 + 8 * 3 + 3
    assert "note" not in dict(net.block.named_parameters()) and net.block.note.startswith("plain")


def test_state_dict_orders_each_module_parameters_then_buffers():
    keys = list(Block().state_dict())
    assert keys == ["scale", "steps", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                    "bn.running_var", "bn.num_batches_tracked"]


def test_reassignment_moves_between_registries():
    net = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="holds a Parameter"):
        net.weight = np.zeros((2, 2))
    net.bias = None
    assert net.bias is None and [n for n, _ in net.named_parameters()] == ["weight"]
    net.extra = nn.Parameter(np.zeros(3, np.float32))
    del net.extra
    assert [n for n, _ in net.named_parameters()] == ["weight"]


def test_train_eval_propagate():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_to_none_or_in_place():
    net = nn.Linear(3, 2)
    net(dl.tensor(np.ones((4, 3), np.float32))).sum().backward()
    grad = net.weight.grad
    net.zero_grad(set_to_none=False)
    assert net.weight.grad is grad and not grad.any()  # same array: a bucket view would survive
    net.zero_grad()
    assert net.weight.grad is None


def test_state_dict_round_trip_is_a_copy():
    dl.seed(0)
    source, target = Net(), Net()
    state = source.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    weight = target.head.weight
    target.load_state_dict(state)
    assert target.head.weight is weight  # loaded in place
    for (name, a), b in zip(target.state_dict().items(), state.values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    state["head.bias"][:] = 99
    assert not (source.head.bias.data == 99).any()


def test_load_state_dict_errors_name_the_keys_and_shapes():
    net = nn.Sequential(nn.Linear(4, 3))
    state = net.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\], unexpected keys \['0.extra'\]"):
        net.load_state_dict(OrderedDict([("0.weight", state["0.weight"]), ("0.extra", np.zeros(1))]))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(3, 5\) in the state dict but \(3, 4\) in the module"):
        net.load_state_dict({"0.weight": np.zeros((3, 5)), "0.bias": np.zeros(3)})
    missing, unexpected = net.load_state_dict({"0.bias": [1.0, 2.0, 3.0], "other": 1}, strict=False)
    assert missing == ["0.weight"] and unexpected == ["other"]
    np.testing.assert_array_equal(net[0].bias.data, [1, 2, 3])


def test_to_dtype_keeps_parameter_objects_and_integer_buffers():
    net = Net()
    params = list(net.parameters())
    optimizer = dl.optim.SGD(net.parameters(), lr=0.1)
    net.to(np.float64)
    assert list(net.parameters()) == params and all(p.dtype == np.float64 for p in params)
    assert net.block.bn.running_mean.dtype == np.float64 and net.block.bn.num_batches_tracked.dtype == np.int64
    net.head(dl.tensor(np.ones((1, 8)))).sum().backward()
    optimizer.step()  # the optimizer still holds the converted parameters
    assert net.head.weight.dtype == np.float64
    with pytest.raises(ValueError, match="unknown device"):
        net.to("tpu")
    with pytest.raises(TypeError, match="floating"):
        net.to(np.int32)


def test_repr_is_readable():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10, bias=False))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "  (1): ReLU()\n"
        "  (2): Flatten(start_dim=1, end_dim=-1)\n"
        "  (3): Linear(in_features=64, out_features=10, bias=False)\n"
        ")"
    )


def test_subclass_must_call_init_first():
    class Broken(nn.Module):
        def __init__(self):
            self.layer = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=r"must call super\(\).__init__\(\) before assigning 'layer'"):
        Broken()


def test_state_dict_loads_into_torch_and_back():
    """Names, shapes and gate orders match torch.nn, so weights move both ways as plain arrays."""
    torch = pytest.importorskip("torch")
    dl.seed(0)
    ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ours(dl.tensor(x)).numpy(), theirs(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    lstm, peer = nn.LSTM(3, 5, num_layers=2), torch.nn.LSTM(3, 5, num_layers=2)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
    seq = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(lstm(dl.tensor(seq))[0].numpy(), peer(torch.from_numpy(seq))[0].detach().numpy(), atol=1e-5)


def test_layers_take_numpy_arrays_as_constant_tensors_without_a_copy():
    """The DataLoader yields NumPy arrays: the README's loop passes them straight to the model."""
    dl.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32)
    out = model(x)
    np.testing.assert_array_equal(out.numpy(), model(dl.tensor(x)).numpy())
    nn.CrossEntropyLoss()(out, np.array([0, 1, 2, 0])).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.shape == (2, 1, 3, 3)
    seen = []
    probe = type("Probe", (nn.Module,), {"forward": lambda self, a: seen.append(a) or a})()
    probe(x)
    assert isinstance(seen[0], dl.Tensor) and seen[0].data is x and not seen[0].requires_grad


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn.Linear(3, 2), (4, 3)),
    (lambda: nn.Conv2d(1, 2, 3), (2, 1, 5, 5)),
    (lambda: nn.LSTM(3, 4, batch_first=True), (2, 5, 3)),
    (lambda: nn.GRU(3, 4), (5, 2, 3)),
    (lambda: nn.RNNCell(3, 4), (2, 3)),
    (lambda: nn.BatchNorm1d(3), (4, 3)),
    (lambda: nn.LayerNorm(3), (4, 3)),
])
def test_a_float64_batch_into_a_float32_layer_is_refused_with_the_cast(layer, shape):
    x = np.random.default_rng(1).standard_normal(shape)
    with pytest.raises(TypeError, match=r"input is float64 but the weights are float32.*x\.astype\(np\.float32\)"
                                         r".*model\.to\(np\.float64\)"):
        layer()(x)
    layer()(x.astype(np.float32))  # cast, it runs
    layer().to(np.float64)(x)  # or the model converted


def test_an_integer_batch_into_a_float_layer_says_to_cast_it():
    with pytest.raises(TypeError, match=r"input is int64 but the weights are float32.*dtype=np\.float32\)$"):
        nn.Linear(3, 2)(np.ones((2, 3), np.int64))


@pytest.mark.parametrize("make", [
    lambda **kw: nn.Linear(3, 2, **kw), lambda **kw: nn.Conv2d(1, 2, 3, **kw), lambda **kw: nn.BatchNorm1d(3, **kw),
    lambda **kw: nn.LayerNorm(3, **kw), lambda **kw: nn.Embedding(5, 3, **kw), lambda **kw: nn.GRU(3, 4, 2, **kw),
    lambda **kw: nn.RNN(3, 4, 1, "relu", **kw), lambda **kw: nn.LSTMCell(3, 4, **kw),
])
def test_dtype_and_device_arguments_as_torchs_layer_factories(make):
    dl.seed(3)
    plain = make()
    dl.seed(3)
    double = make(dtype=np.float64, device="cpu")
    for (name, a), (_, b) in zip(plain.state_dict().items(), double.state_dict().items()):
        assert b.dtype == (np.float64 if a.dtype.kind == "f" else a.dtype), name
        np.testing.assert_array_equal(b, a)  # the same initial values, converted
