import numpy as np
import pytest
from scipy import ndimage

from stemae.geometry import deformation_from_strain
from stemae.simulate import WS2, heterostructure, polycrystal, render_disks, simulate_datacube


def _disk_area(pattern, center, radius):
    """Pixels above half the disk's plateau around ``center``."""
    x, y = center
    h = int(radius + 4)
    win = pattern[int(round(y)) - h : int(round(y)) + h + 1, int(round(x)) - h : int(round(x)) + h + 1]
    return (win > 0.5 * win.max()).sum()


def test_render_disks_conserves_and_places():
    pos = np.array([[[20.3, 15.7], [np.nan, np.nan]]])
    amp = np.array([[1000.0, 5.0]])
    img = render_disks(pos, amp, (40, 50), radius=5.0, edge=0.5)[0]
    assert img.sum() == pytest.approx(1000.0)
    cy, cx = ndimage.center_of_mass(img)
    assert (cx, cy) == pytest.approx((20.3, 15.7), abs=0.01)


def test_disks_keep_their_size_under_strain():
    # 5 % tensile strain moves the disks but must not resize them.
    F = deformation_from_strain(np.array([[0.0, 0.05]]), 0.0, 0.0, 0.0)
    sim = simulate_datacube(F, np.zeros((1, 2), int), [WS2], dose=None, central_fraction=0.5, intensity_variation=0)
    g_a = sim.truth["g1"][0, 0]
    g_b = sim.truth["g1"][0, 1]
    # Real space 5 % longer along x: reciprocal x components shrink by 1/1.05.
    assert g_b == pytest.approx([g_a[0] / 1.05, g_a[1]], rel=1e-6)
    o = sim.truth["origin"][0, 0]
    area_a = _disk_area(sim.data[0, 0], o + g_a, sim.radius)
    area_b = _disk_area(sim.data[0, 1], o + g_b, sim.radius)
    assert abs(area_a - area_b) <= 2
    assert area_a == pytest.approx(np.pi * sim.radius**2, rel=0.1)


def test_monolayer_intensity_ratios_and_dose():
    sim = heterostructure((4, 4), (128, 128), dose=1e6, central_fraction=0.97, seed=1)
    p = sim.data[1, 1].astype(np.float64)
    assert p.sum() == pytest.approx(1e6, rel=0.01)
    o = sim.truth["origin"][1, 1]
    yy, xx = np.mgrid[:128, :128]
    r = sim.radius + 1.0
    central = p[np.hypot(xx - o[0], yy - o[1]) < r].sum() / p.sum()
    assert central == pytest.approx(0.97, abs=0.01)
    g = sim.truth["g1"][1, 1]
    first = p[np.hypot(xx - o[0] - g[0], yy - o[1] - g[1]) < r].sum() / p.sum()
    assert 0.0005 < first < 0.006  # about 0.2 % of the electrons in a first-order disk


def test_poisson_noise_and_background():
    clean = heterostructure((2, 2), (96, 96), dose=None, seed=2)
    noisy = heterostructure((2, 2), (96, 96), dose=1e4, seed=2)
    assert np.allclose(noisy.data, np.round(noisy.data))
    assert noisy.data.sum() / 4 == pytest.approx(1e4, rel=0.05)
    assert np.isclose(clean.data.sum(axis=(2, 3)), 1.0).all()
    bg = heterostructure((2, 2), (96, 96), dose=None, background=0.5, seed=2)
    # Half of the electrons now sit in a smooth, everywhere-positive background.
    rest = bg.data[0, 0] - 0.5 * clean.data[0, 0]
    assert rest.sum() == pytest.approx(0.5, rel=1e-3)
    assert rest.min() > 0
    assert clean.data[0, 0].min() == 0


def test_descan_moves_the_centre():
    sim = heterostructure((5, 9), (100, 110), dose=None, descan=4.0)
    o = sim.truth["origin"]
    assert o[0, -1, 0] - o[0, 0, 0] == pytest.approx(4.0)
    assert o[-1, 0, 1] - o[0, 0, 1] == pytest.approx(2.0)
    from stemae.strain.disks import estimate_probe

    c0, _ = estimate_probe(sim.data[:1, :1].reshape(1, 100, 110))
    c1, _ = estimate_probe(sim.data[:1, -1:].reshape(1, 100, 110))
    assert c1[0] - c0[0] == pytest.approx(4.0, abs=0.1)


def test_heterostructure_truth_is_consistent():
    sim = heterostructure((16, 16), (96, 96), dose=None)
    t = sim.truth
    assert set(np.unique(t["phase"])) == {0, 1}
    # Far from the interface WSe2 is unstrained relative to itself ...
    assert abs(t["e_yy"][:, -1]).max() < 0.005
    # ... and its lattice is 4.1 % larger than WS2's: reciprocal vectors shorter.
    ratio = np.linalg.norm(t["g1"][:, -1], axis=-1) / np.linalg.norm(t["g1"][:, 0], axis=-1)
    assert np.median(ratio) == pytest.approx(WS2.a / 3.282, rel=0.006)


def test_polycrystal_grains_have_orientations():
    sim = polycrystal((24, 24), (96, 96), dose=None, n_grains=4, seed=5)
    g = sim.truth["grain"]
    assert len(np.unique(g)) == 4
    for k in np.unique(g):
        assert np.ptp(sim.truth["orientation"][g == k]) == 0
    assert np.ptp(sim.truth["orientation"]) > 5
