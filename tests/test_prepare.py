"""Raw detector data: NaN pixels, a detector mask, dark and pedestal
subtraction and binning, checked on simulated scans against the truth and
against the same scan without the defect."""

import numpy as np
import pytest

from stemae.data import Datacube
from stemae.data.prepare import fill_masked, prepare
from stemae.errors import InputError
from stemae.simulate import heterostructure
from stemae.strain.classical import map_strain
from stemae.strain.evaluate import strain_errors, truth_strain_maps

REFERENCE = ((0, 8), (0, 2))


@pytest.fixture(scope="module")
def sim():
    return heterostructure((8, 8), (128, 128), dose=1e5, seed=4)


def _xcorr(data):
    return map_strain(data, method="xcorr", reference=REFERENCE)


def _error(sim, res):
    err = strain_errors(res, truth_strain_maps(sim.truth, REFERENCE, res["g_ref"]), res["valid"])
    return max(err[k] for k in ("e_xx", "e_yy", "e_xy"))


def test_fill_masked_takes_the_neighbours_mean():
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    bad = np.zeros((5, 5), bool)
    bad[2, 2] = bad[0, 4] = True
    out = fill_masked(x, bad)
    assert out[2, 2] == pytest.approx(12.0)  # a linear ramp: the neighbours' mean is the value
    assert out[0, 4] == pytest.approx(np.mean([3, 8, 9]))
    np.testing.assert_array_equal(out[~bad], x[~bad])


def test_nan_pixel_is_masked_without_changing_results_elsewhere(sim):
    """One NaN pixel (on a Bragg disk of one pattern) no longer aborts the
    run: that pattern's pixel is filled from its neighbours and every other
    position's maps are bit for bit those of the clean scan."""
    clean = _xcorr(prepare(Datacube(sim.data)).data)
    data = sim.data.astype(np.float32)
    g = sim.truth["g1"][5, 6]
    y, x = np.round(np.array([64, 64]) + g[::-1]).astype(int)
    data[5, 6, y, x] = np.nan
    dirty = _xcorr(prepare(Datacube(data)).data)
    other = np.ones((8, 8), bool)
    other[5, 6] = False
    for k in ("e_xx", "e_yy", "e_xy", "theta", "valid"):
        np.testing.assert_array_equal(dirty[k][other], clean[k][other])
    assert dirty["valid"][5, 6]
    assert abs(dirty["e_xx"][5, 6] - clean["e_xx"][5, 6]) < 2 * clean["sigma_e_xx"][5, 6]


def test_whole_nan_pattern_is_still_refused_by_position(sim):
    data = sim.data.astype(np.float32)
    data[2, 3] = np.nan
    with pytest.raises(InputError, match=r"row 2, col 3\) contains NaN or Inf"):
        _xcorr(prepare(Datacube(data)).data)


def test_pedestal_subtraction_restores_the_maps(sim):
    """A 100-count pedestal on every pixel degrades xcorr's maps; subtracting
    it gives back exactly the maps of the scan without it."""
    clean = _xcorr(sim.data)
    raised = sim.data.astype(np.float32) + 100
    worse = _xcorr(raised)
    fixed = _xcorr(prepare(Datacube(raised), dark=100.0).data)
    assert _error(sim, worse) > 1.3 * _error(sim, clean)
    for k in ("e_xx", "e_yy", "e_xy", "theta"):
        np.testing.assert_allclose(fixed[k], clean[k], atol=1e-7)
    # A dark reference image works the same way.
    dark = np.full(sim.data.shape[2:], 100.0, np.float32)
    again = _xcorr(prepare(Datacube(raised), dark=dark).data)
    np.testing.assert_allclose(again["e_xx"], clean["e_xx"], atol=1e-7)


def test_detector_mask_removes_hot_pixels(sim):
    """Hot pixels (each a hundred times the brightest count) in every
    pattern wreck the lattice fits; masked, the maps are as good as clean."""
    clean = _error(sim, _xcorr(sim.data))
    data = sim.data.astype(np.float32)
    mask = np.zeros(data.shape[2:], bool)
    hot = [(20, 30), (90, 100), (64, 20), (10, 110), (100, 50)]
    for y, x in hot:
        data[:, :, y, x] = 100 * sim.data.max()
        mask[y, x] = True
    broken = _xcorr(data)
    assert broken["valid"].mean() < 0.5 or _error(sim, broken) > 3 * clean
    fixed = _error(sim, _xcorr(prepare(Datacube(data), mask=mask).data))
    assert fixed < 1.2 * clean


def test_binning_keeps_counts_and_scales_the_calibration(sim):
    cube = prepare(Datacube(sim.data, sim.calibration), bin=2)
    assert cube.data.shape == (8, 8, 64, 64)
    np.testing.assert_allclose(np.asarray(cube.data).sum((2, 3)), sim.data.sum((2, 3)), rtol=1e-6)
    assert cube.calibration.q_pixel_size == pytest.approx(2 * sim.calibration.q_pixel_size)
    res = _xcorr(cube.data)
    assert _error(sim, res) < 2e-3 and res["valid"].all()


@pytest.mark.parametrize("kw, message", [
    (dict(bin=40), "--bin 40"),
    (dict(mask=np.ones((128, 128), bool)), "marks 100% of the pixels"),
    (dict(mask=np.zeros((64, 64), bool)), "mask must be 128x128"),
    (dict(dark=np.zeros((3, 3))), "dark reference must be a finite 128x128"),
])
def test_bad_preparation_is_refused(sim, kw, message):
    with pytest.raises(InputError, match=message):
        prepare(Datacube(sim.data), **kw)
