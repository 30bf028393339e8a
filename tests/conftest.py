import numpy as np
import pytest

from stemae.simulate import heterostructure


@pytest.fixture(scope="session")
def hetero():
    """A 40x40 scan of 128x128 WS2/WSe2 patterns at 1e5 electrons, with truth."""
    return heterostructure((40, 40), (128, 128), dose=1e5, seed=3)


@pytest.fixture
def small_cube():
    """A tiny random datacube (3, 4, 16, 20) of counts."""
    rng = np.random.default_rng(0)
    return rng.poisson(5.0, size=(3, 4, 16, 20)).astype(np.float32)
