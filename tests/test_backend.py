"""The backend: allocator setting, devices, default dtype, seeding."""

import subprocess
import sys

import numpy as np
import pytest

import distdl as dl
from distdl import backend


def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off():
    probe = "from distdl._allocator import tune_allocator; print(tune_allocator())"
    on = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={"DISTDL_MALLOC_TUNING": "0", "PATH": ""})
    assert off.stdout.strip() == "False"
    libc = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.lower()
    if "glibc" in libc or "gnu libc" in libc:
        assert on.stdout.strip() == "True"


def test_parse_device():
    assert backend.parse_device("cpu") == ("cpu", None)
    assert backend.parse_device("cuda:1") == ("cuda", 1)
    assert backend.parse_device(0) == ("cuda", 0)
    with pytest.raises(ValueError, match="unknown device"):
        backend.parse_device("tpu:0")


def test_default_dtype_governs_python_numbers():
    try:
        dl.set_default_dtype(np.float64)
        assert dl.tensor([1.0, 2.0]).dtype == np.float64
        with pytest.raises(ValueError, match="float32 or float64"):
            dl.set_default_dtype(np.int32)
    finally:
        dl.set_default_dtype(np.float32)
    assert dl.tensor([1.0]).dtype == np.float32


def test_asking_for_a_gpu_without_cupy_says_what_to_install():
    if dl.gpu_available():
        pytest.skip("a GPU is present")
    probe = ("import sys; sys.modules['cupy'] = None\n"
             "import distdl as dl\n"
             "try:\n    dl.tensor([1.0], device='cuda')\nexcept RuntimeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'distdl[gpu]'" in out
