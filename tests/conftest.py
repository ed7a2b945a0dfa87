import numpy as np
import pytest

import distdl as dl


@pytest.fixture
def float64():
    """Build layers in float64 (for finite differences), restoring the default afterwards."""
    previous = dl.get_default_dtype()
    dl.set_default_dtype(np.float64)
    dl.seed(0)
    yield
    dl.set_default_dtype(previous)
