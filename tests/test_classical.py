import numpy as np
import pytest

from stemae.simulate import heterostructure, polycrystal
from stemae.strain import map_strain
from stemae.strain.disks import center_of_mass, find_disks
from stemae.strain.evaluate import strain_errors, truth_strain_maps
from stemae.strain.lattice import align_to_reference, choose_basis

REF = ((0, 40), (0, 7))  # far-field WS2 columns


def test_xcorr_recovers_heterostructure_strain(hetero):
    """Done-when: 1e5 e/pattern, 128x128 patterns, MAE < 5e-4 and < 0.05 deg."""
    res = map_strain(hetero.data, method="xcorr", reference=REF)
    assert res["valid"].mean() > 0.99
    err = strain_errors(res, truth_strain_maps(hetero.truth, REF, res["g_ref"]), res["valid"])
    assert err["e_xx"] < 5e-4
    assert err["e_yy"] < 5e-4
    assert err["e_xy"] < 5e-4
    assert err["theta"] < 0.05
    # The lattice mismatch shows: WSe2 (right) is ~4.1 % larger than WS2.
    assert np.nanmedian(res["e_yy"][:, -5:]) == pytest.approx(0.041, abs=0.004)
    # The origin follows the true central beam.
    assert np.abs(res["origin"] - hetero.truth["origin"]).max() < 0.05


def test_com_method_runs_and_is_less_precise(hetero):
    res = map_strain(hetero.data, method="com", reference=REF)
    err = strain_errors(res, truth_strain_maps(hetero.truth, REF, res["g_ref"]), res["valid"])
    assert res["valid"].mean() > 0.99
    assert err["e_xx"] < 2e-3 and err["theta"] < 0.2
    np.testing.assert_allclose(res["com"], center_of_mass(hetero.data.reshape(-1, 128, 128)).reshape(40, 40, 2))


def test_basis_is_primitive_on_hexagonal_lattice():
    # Six first-order spots at 60 degrees plus second-order spots at sqrt(3):
    # the chosen basis must be two first-order vectors, not a longer one.
    ang = np.radians(np.arange(0, 360, 60) + 10)
    first = 20 * np.stack([np.cos(ang), np.sin(ang)], 1)
    second = 20 * np.sqrt(3) * np.stack([np.cos(ang + np.pi / 6), np.sin(ang + np.pi / 6)], 1)
    pts = np.concatenate([first, second])
    # Weak first-order spots (a small structure factor) beside strong second-order ones.
    strength = np.r_[0.05, 1.0, 0.05, 1.0, 0.05, 1.0, np.ones(6)]
    G = choose_basis(pts, strength, min_length=5)
    np.testing.assert_allclose(np.linalg.norm(G, axis=0), 20, rtol=1e-9)
    assert np.linalg.det(G) > 0
    hk = np.linalg.solve(G, pts.T)
    np.testing.assert_allclose(hk, np.round(hk), atol=1e-9)


def test_align_to_reference_undoes_symmetry_relabelling():
    G = np.array([[20.0, 10.0], [0.0, 17.32]])
    M = np.array([[0.0, -1.0], [1.0, 1.0]])  # 60-degree relabelling on a hexagonal lattice
    np.testing.assert_allclose(align_to_reference(G @ M, G), G)


@pytest.mark.parametrize("shape", [(96, 96), (150, 122)])
def test_any_pattern_size_and_off_centre_beam(shape):
    sim = heterostructure((12, 12), shape, dose=1e5, descan=3.0, center=(shape[1] / 2 - 6.3, shape[0] / 2 + 4.8))
    ref = ((0, 12), (0, 3))
    res = map_strain(sim.data, reference=ref)
    assert res["valid"].mean() > 0.97
    err = strain_errors(res, truth_strain_maps(sim.truth, ref, res["g_ref"]), res["valid"])
    assert err["e_xx"] < 1.5e-3 and err["e_yy"] < 1.5e-3
    assert np.nanmax(np.abs(res["origin"] - sim.truth["origin"])) < 0.1


def test_weakly_scattering_monolayer():
    # The central beam outshines each first-order disk by ~400x.
    sim = heterostructure((16, 16), (128, 128), dose=1e5, central_fraction=0.97, seed=4)
    o, g = sim.truth["origin"][0, 0], sim.truth["g1"][0, 0]
    yy, xx = np.mgrid[:128, :128]
    p = sim.data[0, 0]
    ratio = p[np.hypot(xx - o[0], yy - o[1]) < sim.radius].sum() / p[np.hypot(xx - o[0] - g[0], yy - o[1] - g[1]) < sim.radius].sum()
    assert ratio > 200
    ref = ((0, 16), (0, 3))
    res = map_strain(sim.data, reference=ref)
    assert res["valid"].mean() > 0.95
    err = strain_errors(res, truth_strain_maps(sim.truth, ref, res["g_ref"]), res["valid"])
    # Dose-limited: ~200 electrons per first-order disk.
    assert err["e_xx"] < 4e-3 and err["e_yy"] < 4e-3 and err["theta"] < 0.3


def test_polycrystal_grains_are_indexed():
    sim = polycrystal((24, 24), (128, 128), dose=1e5, n_grains=4, seed=2)
    grain = sim.truth["grain"]
    g0 = grain[12, 12]
    ref = grain == g0
    res = map_strain(sim.data, reference=ref)
    assert res["valid"].mean() > 0.9
    G = np.stack([res["g1"], res["g2"]], -1)
    truth = truth_strain_maps(sim.truth, ref, res["g_ref"], like=G)
    # Every grain, in any orientation: rotation and strain relative to the reference grain.
    err = strain_errors(res, truth, res["valid"])
    assert err["e_xx"] < 1e-3 and err["e_yy"] < 1e-3 and err["e_xy"] < 1e-3
    assert err["theta"] < 0.05
    assert np.ptp(res["theta"][res["valid"]]) > 10  # the grains really are rotated


def test_find_disks_returns_central_beam_first_class():
    sim = heterostructure((1, 2), (100, 100), dose=None)
    d = find_disks(sim.data.reshape(2, 100, 100), sim.radius, (50, 50))
    c = d["positions"][np.arange(2), d["central"]]
    np.testing.assert_allclose(c, sim.truth["origin"].reshape(2, 2), atol=0.02)


def test_blank_patterns_find_no_disks(hetero):
    """A batch of blank patterns finds no disks instead of failing."""
    from stemae.strain.classical import ClassicalStep, fit_state

    step = ClassicalStep(fit_state(hetero.data[:8, :8], method="xcorr"), hetero.data.shape[2:])
    patterns = np.array(hetero.data[0, :4], np.float32)
    patterns[1] = 0
    out = step(patterns)
    assert out["n_disks"][1] == 0 and not out["valid"][1] and out["valid"][[0, 2, 3]].all()
    assert not step(np.zeros((2,) + patterns.shape[1:], np.float32))["valid"].any()


@pytest.mark.parametrize("refine", ["xcorr", "com"])
def test_a_patterns_disks_do_not_depend_on_its_batch(refine):
    """A pattern's disks are bit-identical alone, in a batch and in another
    order, so maps agree exactly across batch sizes, workers and resumes."""
    sim = heterostructure((2, 6), (64, 64), dose=1e5, seed=1)
    p = sim.data.reshape(12, 64, 64)
    batch = find_disks(p, sim.radius, (32, 32), refine=refine)
    back = find_disks(p[::-1], sim.radius, (32, 32), refine=refine)
    alone = find_disks(p[5:6], sim.radius, (32, 32), refine=refine)
    assert np.isfinite(batch["positions"][:, 0]).all()
    for k in batch:
        np.testing.assert_array_equal(back[k][::-1], batch[k], err_msg=k)
        np.testing.assert_array_equal(alone[k][0], batch[k][5], err_msg=k)
