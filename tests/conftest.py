import time

import numpy as np
import pytest

import distdl as dl
from launcher import shm


@pytest.fixture(scope="session", autouse=True)
def no_segments_left():
    """Tests that run mpiexec themselves (not through distdl-run, whose attempts sweep) and end a job by killing
    or aborting it leave MPICH's /dev/shm segments behind (about 2 MiB each, 54 MB after two runs of the suite):
    those made during the session that no process maps go at its end, as the launcher's own."""
    began = time.time()
    yield
    shm.remove_leftovers(began)


@pytest.fixture
def float64():
    """Build layers in float64 (for finite differences), restoring the default afterwards."""
    previous = dl.get_default_dtype()
    dl.set_default_dtype(np.float64)
    dl.seed(0)
    yield
    dl.set_default_dtype(previous)
