"""Device placement: dl.init() binds each worker to GPU local_rank % GPUs where CuPy sees one, else the host;
DISTDL_DEVICE wins; asking for a GPU without CuPy says what to install (this venv has no CuPy)."""

import importlib.util
import logging

import numpy as np
import pytest

import distdl as dl
from distdl import device, nn
from distdl.comm.placement import choose_device
from distdl.data import DataLoader, TensorDataset

no_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
INSTALL = r"CuPy is not installed: pip install 'distdl\[gpu\]'"


@pytest.mark.parametrize("requested,local_rank,gpus,expected", [
    ("auto", 0, 0, "cpu"), ("auto", 3, 0, "cpu"),
    ("auto", 0, 4, "cuda:0"), ("auto", 5, 4, "cuda:1"), ("auto", 1, 1, "cuda:0"),  # two ranks share the one GPU
    ("cuda", 3, 2, "cuda:1"), ("gpu", 3, 2, "cuda:1"), ("cuda:3", 0, 8, "cuda:3"), ("gpu:2", 0, 8, "cuda:2"),
    ("cpu", 2, 8, "cpu"), ("sim", 2, 8, "sim"),
])
def test_each_local_rank_gets_its_device(requested, local_rank, gpus, expected):
    assert choose_device(requested, local_rank, gpus)[0] == expected


def test_a_gpu_index_beyond_those_seen_is_refused_before_binding():
    with pytest.raises(ValueError, match=r"device='cuda:2', but CuPy sees 2 GPUs here \(cuda:0 to cuda:1\)"):
        choose_device("cuda:2", 0, 2)


def test_an_unknown_device_says_which_are_known():
    with pytest.raises(ValueError, match=r"unknown device 'tpu': use one of auto, cpu, sim, cuda, cuda:N"):
        choose_device("tpu", 0, 0)


@pytest.fixture
def fresh(monkeypatch):
    """No communicator and no bound device before and after the test."""
    dl.shutdown()
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    monkeypatch.setattr(device, "_bound", None)
    yield
    dl.shutdown()


def test_init_binds_the_host_where_no_gpu_is_seen_and_says_so_once(fresh, caplog):
    with caplog.at_level(logging.INFO, logger="distdl.comm"):
        dl.init(backend="local")
        dl.init(backend="local")
    assert device.current() is device.HOST
    said = [r.getMessage() for r in caplog.records if "computes on" in r.getMessage()]
    assert said == ["distdl: rank 0 computes on cpu (no GPU seen by CuPy)"]


def test_distdl_device_wins_over_the_argument(fresh, monkeypatch, caplog):
    monkeypatch.setenv("DISTDL_DEVICE", "sim")
    with caplog.at_level(logging.INFO, logger="distdl.comm"):
        dl.init(backend="local", device="cpu")
    assert device.current().kind == "sim"
    assert "computes on sim (DISTDL_DEVICE=sim)" in caplog.text


@no_cupy
@pytest.mark.parametrize("how", ["init", "DISTDL_DEVICE"])
def test_init_asked_for_a_gpu_without_cupy_says_what_to_install_and_leaves_no_world(how, fresh, monkeypatch):
    if how == "DISTDL_DEVICE":
        monkeypatch.setenv("DISTDL_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match=INSTALL) as raised:
        dl.init(backend="local", device="cuda" if how == "init" else "auto")
    assert str(raised.value).startswith("DISTDL_DEVICE=cuda") == (how == "DISTDL_DEVICE")  # where the ask came from
    from distdl.comm import world

    assert world._current is None  # a later init starts afresh
    monkeypatch.delenv("DISTDL_DEVICE", raising=False)
    dl.init(backend="local", device="cpu")


@no_cupy
@pytest.mark.parametrize("what", ["model.to", "tensor", "DataLoader"])
def test_asking_for_a_gpu_without_cupy_says_what_to_install(what):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(RuntimeError, match=INSTALL):
        if what == "model.to":
            nn.Linear(3, 2).to("cuda")
        elif what == "tensor":
            dl.tensor(x, device="cuda")
        else:
            DataLoader(TensorDataset(x), batch_size=1, device="cuda")
