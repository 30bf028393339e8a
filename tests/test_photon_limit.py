"""Strain at the photon limit: measured disk shapes, pooled lattices, the
Cramér-Rao bound, calibrated uncertainties and per-disk amplitudes, all on
monolayer-like simulated patterns (97 % of the electrons in the central disk,
a diffuse background) whose truth is known."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from stemae.geometry import strain_maps
from stemae.nn.sampling import erfc_table
from stemae.strain.ccstae.likelihood import fit_disk_lattice
from stemae.simulate import WS2, heterostructure, render_disks, simulate_datacube
from stemae.strain import ccstae, map_strain
from stemae.strain.bound import MAE_PER_SIGMA, strain_bound
from stemae.strain.disks import find_disks
from stemae.strain.evaluate import COMPONENTS, truth_strain_maps
from stemae.strain.lattice import reduce_basis, symmetry_angle
from stemae.strain.pooled import aligned_sum, lattice_check, pooled_basis
from stemae.strain.profiles import DISK_DR, background_profile, disk_profile, fit_pseudo_voigt, pseudo_voigt_edge

REF = ((0, 24), (0, 4))


@pytest.fixture(scope="module")
def monolayer():
    """A 24x24 WS2/WSe2 scan of 128x128 monolayer patterns at 1e5 electrons, 30 % background."""
    return heterostructure((24, 24), (128, 128), dose=1e5, central_fraction=0.97, background=0.3, seed=21)


@pytest.fixture(scope="module")
def monolayer_fit(monolayer):
    model, record = ccstae.fit(monolayer.data, n_classes=2, n_train=256, epochs=1, seed=2)
    return model, record, ccstae.predict(model, monolayer.data)


def test_central_disk_profile_and_pseudo_voigt_edge():
    rng = np.random.default_rng(0)
    origins = 64 + rng.uniform(-0.5, 0.5, (100, 2))
    disks = render_disks(origins[:, None], np.full((100, 1), 1e5), (128, 128), 5.2, 0.6).astype(np.float32) + 3.0
    table, radius = disk_profile(disks, origins, 5.0)
    assert radius == pytest.approx(5.2, abs=0.02)
    r = np.arange(len(table)) * DISK_DR
    np.testing.assert_allclose(table, erfc_table(5.2, 0.6, r_max=r[-1]).numpy()[: len(table)], atol=0.01)
    edge = pseudo_voigt_edge(r, 5.0, 0.4, 0.8, 0.3)
    fitted, params = fit_pseudo_voigt(edge)
    assert params["radius"] == pytest.approx(5.0, abs=1e-3)
    assert params["sigma"] == pytest.approx(0.4, abs=1e-2) and params["eta"] == pytest.approx(0.3, abs=1e-2)
    assert np.abs(fitted - edge).max() < 0.02


def test_reduced_basis_and_symmetry():
    G = np.array([[30.31, -30.42], [17.81, 17.45]])  # a 120-degree hexagonal basis
    R = reduce_basis(G)
    assert np.degrees(np.arccos(R[:, 0] @ R[:, 1] / np.prod(np.linalg.norm(R, axis=0)))) == pytest.approx(60, abs=1)
    assert np.linalg.det(R) > 0
    assert abs(round(np.linalg.det(np.linalg.solve(G, R)))) == 1  # the same lattice
    assert symmetry_angle(R) == pytest.approx(np.pi / 3)
    assert symmetry_angle(np.diag([20.0, 20.0])) == pytest.approx(np.pi / 2)
    assert symmetry_angle(np.diag([20.0, 23.0])) == pytest.approx(np.pi)


def test_pooled_sum_finds_the_lattice_where_single_patterns_do_not():
    """1e4 electrons per monolayer pattern, 30 % background: about ten
    electrons per first-order disk. No single pattern shows the lattice; the
    sum of a region's patterns on their central beams does, and the check
    says so."""
    sim = heterostructure((12, 12), (128, 128), dose=1e4, central_fraction=0.97, background=0.3, seed=4)
    one = np.zeros((12, 12), bool)
    one[5, 1] = True
    with pytest.warns(UserWarning, match="indexing doubtful"):
        assert not pooled_basis(sim.data, one)[1]["ok"]
    mask = np.zeros((12, 12), bool)
    mask[:, :4] = True
    G, check, total, origin = pooled_basis(sim.data, mask)
    assert check["ok"] and check["indexed"] > 0.8
    true = sim.truth["g1"][mask].mean(0), sim.truth["g2"][mask].mean(0)
    vectors = np.stack([h * G[:, 0] + k * G[:, 1] for h in (-1, 0, 1) for k in (-1, 0, 1)])
    # Both true basis vectors are lattice vectors of the found basis, to 2 %:
    # a start the per-pattern fits converge from (a wrong lattice is off by
    # tens of per cent).
    for g in true:
        assert np.min(np.linalg.norm(vectors - g, axis=1)) < 0.02 * np.linalg.norm(g)
    # A superlattice (every second reflection) misses half the disks: flagged.
    d = find_disks(total[None], check["radius"], origin, min_relative_intensity=0.02)
    assert not lattice_check(d, 2 * G, check["radius"])["ok"]


def test_pooled_basis_warns_when_the_region_holds_no_single_lattice():
    from stemae.simulate import polycrystal

    sim = polycrystal((16, 16), (128, 128), n_grains=6, dose=1e5, seed=4)
    grain, orient = sim.truth["grain"].ravel(), sim.truth["orientation"].ravel()
    largest = np.argsort(np.bincount(grain))[-2:]
    turn = abs(np.diff([orient[grain == k][0] for k in largest])[0]) % 90
    assert min(turn, 90 - turn) > 10  # two large grains well apart in orientation (square lattices)
    with pytest.warns(UserWarning, match="indexing doubtful"):
        pooled_basis(sim.data, np.ones((16, 16), bool))


def test_aligned_sum_puts_every_central_beam_on_the_target():
    rng = np.random.default_rng(1)
    centres = 60 + rng.uniform(-4, 4, (20, 2))
    patterns = render_disks(centres[:, None], np.full((20, 1), 100.0), (128, 128), 5.0)
    total = aligned_sum(patterns, centres, np.array([64.0, 64.0]))
    yy, xx = np.mgrid[:128, :128]
    com = np.array([(total * xx).sum(), (total * yy).sum()]) / total.sum()
    np.testing.assert_allclose(com, 64 + (centres - np.round(centres)).mean(0), atol=0.05)


def test_the_bound_is_what_fits_reach():
    """Poisson noise on one simulated monolayer pattern, 200 times: the fits'
    scatter in strain matches the Cramér-Rao bound, which scales as one over
    the square root of the dose."""
    sim = simulate_datacube(np.eye(2)[None, None], np.zeros((1, 1), int), [WS2], orientation=9.0, dose=None,
                            central_fraction=0.97, background=0.3, intensity_variation=0.0, seed=1)
    pattern = sim.data[0, 0].astype(np.float64)
    sd5 = strain_bound(pattern, 1e5)
    sd4 = strain_bound(pattern, 1e4)
    for k in COMPONENTS:
        assert sd4[k] / sd5[k] == pytest.approx(np.sqrt(10), rel=0.05)
    n = 200
    expected = pattern / pattern.sum() * 1e5
    data = torch.tensor(np.random.default_rng(3).poisson(np.broadcast_to(expected, (n, 128, 128))),
                        dtype=torch.float32)
    G = np.stack([sim.truth["g1"][0, 0], sim.truth["g2"][0, 0]], 1).astype(np.float64)
    hk = np.array([[h, k] for h in range(-6, 7) for k in range(-6, 7) if (h, k) != (0, 0)])
    c = sim.truth["origin"][0, 0] + hk @ G.T
    hk = hk[((c > -2) & (c < 129)).all(1)]
    centres = sim.truth["origin"][0, 0] + hk @ G.T
    bg = background_profile(expected[None].astype(np.float32), sim.truth["origin"][0], centres[None], sim.radius)
    out = fit_disk_lattice(data, torch.tensor(sim.truth["origin"][0]).expand(n, 2), torch.eye(2).expand(n, 2, 2),
                           torch.tensor(hk @ G.T, dtype=torch.float32), erfc_table(sim.radius, 0.5), DISK_DR,
                           sim.radius, background=torch.tensor(bg), iterations=4, regather=(1,),
                           local_background=False)
    Gf = out["A"].double().numpy() @ G
    maps, _ = strain_maps(Gf.reshape(n, 1, 2, 2), None)
    for k in ("e_xx", "e_yy", "e_xy"):
        spread = np.std(maps[k])
        assert spread == pytest.approx(sd5[k], rel=0.25), (k, spread, sd5[k])


def test_a_fit_from_several_starts_goes_on_from_the_one_that_fits():
    """Two starts per pattern, the true lattice and one 4 % larger, in
    either order: every pattern goes on from the true one, and ends where a
    fit from that start alone ends."""
    sim = simulate_datacube(np.eye(2)[None, None], np.zeros((1, 1), int), [WS2], orientation=9.0, dose=None,
                            central_fraction=0.97, background=0.3, intensity_variation=0.0, seed=1)
    pattern = sim.data[0, 0].astype(np.float64)
    n = 16
    data = torch.tensor(np.random.default_rng(4).poisson(np.broadcast_to(pattern / pattern.sum() * 1e5, (n, 128, 128))),
                        dtype=torch.float32)
    G = np.stack([sim.truth["g1"][0, 0], sim.truth["g2"][0, 0]], 1)
    hk = np.array([[h, k] for h in range(-4, 5) for k in range(-4, 5) if (h, k) != (0, 0)])
    hk = hk[(np.abs(sim.truth["origin"][0, 0] + hk @ G.T - 64) < 60).all(1)]
    bases = torch.tensor(np.stack([hk @ G.T, 1.04 * hk @ G.T]), dtype=torch.float32)  # (2, J, 2)
    true_first = torch.arange(n) % 2 == 0
    order = torch.stack([torch.where(true_first, 0, 1), torch.where(true_first, 1, 0)], 1)  # (n, 2) base per start
    origin = torch.tensor(sim.truth["origin"][0]).expand(n, 2)
    kw = dict(disk=erfc_table(sim.radius, 0.5), disk_dr=DISK_DR, radius=sim.radius, iterations=4, regather=(0, 1))
    both = fit_disk_lattice(data, origin, torch.eye(2).expand(n, 2, 2, 2), bases[order], **kw)
    alone = fit_disk_lattice(data, origin, torch.eye(2).expand(n, 2, 2), bases[0], **kw)
    assert torch.equal(both["start"], torch.where(true_first, 0, 1))
    torch.testing.assert_close(both["A"], alone["A"], atol=1e-5, rtol=0)
    torch.testing.assert_close(both["information"], alone["information"], rtol=1e-4, atol=0)


def test_uncertainties_are_calibrated_and_near_the_bound(monolayer, monolayer_fit):
    """60-76 % of the true errors lie within one reported standard deviation,
    per component; and the errors sit within 1.3 times the bound."""
    model, record, pred = monolayer_fit
    m = ccstae.to_strain(pred, REF)
    truth = truth_strain_maps(monolayer.truth, REF, m["g_ref"], like=np.stack([m["g1"], m["g2"]], -1))
    ok = m["valid"]
    assert ok.mean() > 0.98
    noiseless = heterostructure((24, 24), (128, 128), dose=None, central_fraction=0.97, background=0.3, seed=21)
    G = np.stack([noiseless.truth["g1"], noiseless.truth["g2"]], -1).reshape(-1, 2, 2)
    bound = strain_bound(noiseless.data.reshape(-1, 128, 128) * 1e5, origin=noiseless.truth["origin"].reshape(-1, 2),
                         basis=G, reference_size=96)
    for k in COMPONENTS:
        err = np.abs(m[k] - truth[k])[ok]
        inside = np.mean(err < m[f"sigma_{k}"][ok])
        assert 0.60 <= inside <= 0.76, (k, inside)
        assert err.mean() < 1.3 * MAE_PER_SIGMA * bound[k].mean(), k
    assert (m["phase"] == monolayer.truth["phase"]).mean() > 0.98


def test_disk_intensities_follow_the_true_ones(monolayer, monolayer_fit):
    """Per-reflection fitted counts (virtual dark field) against the
    simulator's true disk intensities, matched by position."""
    model, _, pred = monolayer_fit
    T = monolayer.truth
    hk = model.hk.numpy()
    checked = 0
    flat = pred["disk_intensity"].reshape(-1, len(hk))
    seen = np.flatnonzero(np.isfinite(flat).any(0))  # reflections on the detector somewhere
    for j in seen[np.argsort(-np.nanmedian(flat[:, seen], 0))][:6]:
        fitted = pred["disk_intensity"][..., j]
        # The true disk nearest this reflection's fitted centre at every position.
        G = pred["G"]
        centre = pred["origin"] + np.einsum("rcij,j->rci", G, hk[j].astype(float))
        d = np.linalg.norm(T["disk_positions"] - centre[:, :, None], axis=-1)
        true = np.take_along_axis(T["disk_intensity"], np.nanargmin(d, -1)[..., None], -1)[..., 0]
        ok = np.isfinite(fitted) & (np.nanmin(d, -1) < 1.0)
        assert ok.mean() > 0.9
        r = np.corrcoef(fitted[ok], true[ok])[0, 1]
        assert r > 0.9, (hk[j], r)
        np.testing.assert_allclose(np.median(fitted[ok] / true[ok]), 1.0, atol=0.15)
        checked += 1
    assert checked == 6


def test_xcorr_reports_uncertainties_from_its_lattice_fits(monolayer):
    res = map_strain(monolayer.data, method="xcorr", reference=REF)
    assert res["indexing"]["ok"]
    for k in COMPONENTS:
        s = res[f"sigma_{k}"][res["valid"]]
        assert np.isfinite(s).all() and (s > 0).all()
    truth = truth_strain_maps(monolayer.truth, REF, res["g_ref"])
    inside = np.mean(np.abs(res["e_xx"] - truth["e_xx"])[res["valid"]] < res["sigma_e_xx"][res["valid"]])
    assert 0.45 < inside < 0.9


def test_rotated_grains_are_fitted_in_any_orientation():
    """A monolayer polycrystal (grains 0-35 degrees apart, 1e5 e, 30 %
    background): every grain's error within 1.3 times the reference grain's."""
    from stemae.simulate import polycrystal

    sim = polycrystal((24, 24), (128, 128), n_grains=4, dose=1e5, central_fraction=0.97, background=0.3, seed=6)
    ref = sim.truth["grain"] == sim.truth["grain"][12, 12]
    model, _ = ccstae.fit(sim.data, n_classes=1, n_train=256, epochs=1, seed=0)
    m = ccstae.to_strain(ccstae.predict(model, sim.data), ref)
    truth = truth_strain_maps(sim.truth, ref, m["g_ref"], like=np.stack([m["g1"], m["g2"]], -1))
    grain = sim.truth["grain"]
    base = np.abs(m["e_xx"] - truth["e_xx"])[ref & m["valid"]].mean()
    for g in np.unique(grain):
        sel = (grain == g) & m["valid"]
        assert sel.mean() > 0, g
        assert np.abs(m["e_xx"] - truth["e_xx"])[sel].mean() < 1.3 * base + 2e-4, g


def test_centroid_offsets_find_each_disk_on_a_sloped_background():
    """Whole disks' centroids relative to given centres, a diffuse
    background's slope taken off; a disk the detector edge cuts has none."""
    from stemae.strain.ccstae.likelihood import centroid_offsets

    true = np.array([[[20.3, 30.7], [45.6, 31.2], [33.1, 50.4], [62.0, 10.0]]])
    img = render_disks(true, np.full((1, 4), 2e4), (64, 64), radius=6.0)[0]
    yy, xx = np.mgrid[0:64, 0:64]
    img = img + 5.0 + 0.08 * xx + 0.05 * yy
    given = true + np.array([0.3, -0.2])
    d, var = centroid_offsets(torch.as_tensor(img[None], dtype=torch.float64), torch.as_tensor(given), 6.0)
    d, var = d.numpy()[0], var.numpy()[0]
    np.testing.assert_allclose(d[:3], (true - given)[0, :3], atol=0.01)
    assert np.isnan(d[3]).all() and np.isnan(var[3])
    assert (var[:3] > 0).all()


def _lattice_map(n: int):
    """An n x n map of one lattice for the pooled correction's tests: bases
    ``G`` (n, n, 2, 2) px, the 24 reflections ``hk`` (24, 2) with
    |h|, |k| <= 2, their vectors ``g`` (n, n, 24, 2) px, one phase and every
    position valid."""
    G = np.broadcast_to(np.array([[30.0, -15.0], [0.0, 26.0]]), (n, n, 2, 2)).copy()
    hk = np.array([(h, k) for h in (-2, -1, 0, 1, 2) for k in (-2, -1, 0, 1, 2) if (h, k) != (0, 0)], float)
    g = np.einsum("jk,yxik->yxji", hk, G)
    return G, hk, g, np.zeros((n, n), int), np.ones((n, n), bool)


def test_pooled_centroid_correction_follows_coherent_offsets_and_ignores_noise():
    """Offsets that a smooth lattice change explains, pooled over neighbours,
    move the lattices by that change (weight about 1 on the entries that
    change); offsets of pure noise get a weight of about 0 and leave them
    where they were."""
    from stemae.strain.ccstae.predict import pooled_centroid_correction

    rng = np.random.default_rng(0)
    Ry = Rx = 24
    G, hk, g, phase, valid = _lattice_map(Ry)
    yy, xx = np.mgrid[0:Ry, 0:Rx] / Ry
    M = np.zeros((Ry, Rx, 2, 2))
    M[..., 0, 0], M[..., 0, 1] = 2e-3 * np.sin(2 * xx), 1e-3 * np.cos(3 * yy)
    var = np.full((Ry, Rx, len(hk)), 1e-4)
    coherent = np.einsum("yxab,yxjb->yxja", M, g) + rng.normal(0, 1e-2, g.shape)
    out, weight, added = pooled_centroid_correction(G, coherent, var, hk, phase, valid, size=5)
    assert (weight[0] > 0.8).all() and (weight[1] < 0.2).all()  # M's second row is zero: noise only
    inner = (slice(3, -3), slice(3, -3))
    want = (np.eye(2) + M) @ G
    assert np.abs(out - want)[inner].max() < 0.3 * np.abs(want - G)[inner].max()
    # The reported variance of the correction is its scatter over noise draws
    # (the first row's entries, applied with weight about 1).
    other = np.random.default_rng(2)
    draws = np.stack([pooled_centroid_correction(G, np.einsum("yxab,yxjb->yxja", M, g)
                                                 + other.normal(0, 1e-2, g.shape), var, hk, phase, valid, size=5)[0]
                      for _ in range(60)])
    ratio = draws.var(0)[inner][..., 0, :] / added[inner][..., 0, :]
    assert 0.8 < np.median(ratio) < 1.25
    noise = rng.normal(0, 1e-2, g.shape)
    out, weight, added = pooled_centroid_correction(G, noise, var, hk, phase, valid, size=5)
    assert (weight < 0.2).all()
    assert np.abs(out - G).max() < 1e-3


def test_pooled_centroid_correction_leaves_positions_without_centroids_in_their_pool_alone():
    """Where centroids are sparse (few windows on the detector, or few fits
    usable), a position with none within its pool keeps its lattice and the
    weights are those the positions with centroids give: a sum of no
    weights is zero, not rounding residue taken for a neighbour (which made
    the pooled variance huge and the weights of the whole map 0)."""
    from stemae.strain.ccstae.predict import pooled_centroid_correction

    n = 15
    G, hk, g, phase, valid = _lattice_map(n)
    M = np.array([[2e-3, 0.0], [0.0, 0.0]])
    for seed in range(20):
        rng = np.random.default_rng(seed)
        var = 1e-4 * rng.uniform(0.5, 20, (n, n, 1)) * np.ones(len(hk))
        offsets = np.einsum("ab,yxjb->yxja", M, g) + rng.normal(0, 1e-2, g.shape)
        has = rng.random((n, n)) < 0.12
        offsets[~has] = np.nan
        out, weight, added = pooled_centroid_correction(G, offsets, var, hk, phase, valid, size=7)
        lonely = ndimage.maximum_filter(has, 7, mode="constant") == 0
        assert weight[0, 0] > 0.9
        assert (out[lonely] == G[lonely]).all() and (added[lonely] == 0).all()
        assert np.isfinite(out).all() and np.isfinite(added).all()


def test_the_centroid_pass_gate_is_above_what_noise_gives_its_block():
    """``predict`` measures the whole map's centroids only where its central
    block's largest weight reaches ``POOL_MIN_WEIGHT``: pure photon noise
    on such a block gets there about once in a hundred maps (not, as a gate
    near 0 would, in half of them), while offsets a lattice change explains
    pass it."""
    from stemae.strain.ccstae.predict import POOL, POOL_MIN_WEIGHT, POOL_PROBE, pooled_centroid_correction

    rng = np.random.default_rng(1)
    n = POOL_PROBE
    G, hk, g, phase, valid = _lattice_map(n)
    var = np.full((n, n, len(hk)), 1e-4)
    largest = [pooled_centroid_correction(G, rng.normal(0, 1e-2, g.shape), var, hk, phase, valid, size=POOL)[1].max()
               for _ in range(400)]
    assert np.mean(np.array(largest) >= POOL_MIN_WEIGHT) < 0.03
    assert np.mean(np.array(largest) > 0.05) > 0.5  # the old gate's level: noise passed it most of the time
    yy = np.mgrid[0:n, 0:n][0] / n
    M = np.zeros((n, n, 2, 2))
    M[..., 0, 1] = 1e-4 * np.cos(3 * yy)  # a shear of 1e-4; the pooled M's noise is under 1e-5
    coherent = np.einsum("yxab,yxjb->yxja", M, g) + rng.normal(0, 1e-2, g.shape)
    assert pooled_centroid_correction(G, coherent, var, hk, phase, valid, size=POOL)[1].max() >= POOL_MIN_WEIGHT
