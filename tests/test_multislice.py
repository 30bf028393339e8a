"""abTEM multislice backend: real physics, checked against the crystal."""

import numpy as np
import pytest

abtem = pytest.importorskip("abtem")
ase_build = pytest.importorskip("ase.build")

from stemae.simulate import electron_wavelength  # noqa: E402
from stemae.simulate.multislice import simulate_multislice  # noqa: E402
from stemae.strain.disks import estimate_probe, find_disks  # noqa: E402
from stemae.strain.lattice import choose_basis, lattice_points  # noqa: E402


def test_ws2_monolayer_disks_sit_on_the_reciprocal_lattice():
    a = 3.153
    atoms = abtem.orthogonalize_cell(ase_build.mx2("WS2", a=a, size=(1, 1, 1), vacuum=2)) * (12, 7, 1)
    data, cal = simulate_multislice(atoms, (1, 2), 2.0, sampling=0.08, q_pixel_size=0.02, pattern_shape=(96, 100))
    assert data.shape == (1, 2, 96, 100)
    patterns = data.reshape(2, 96, 100)
    center, radius = estimate_probe(patterns)
    # The central disk is the probe aperture: radius = alpha / lambda.
    assert radius * cal.q_pixel_size == pytest.approx(1.5e-3 / electron_wavelength(300), rel=0.1)
    # A weakly scattering monolayer: the central beam keeps almost everything.
    yy, xx = np.mgrid[:96, :100]
    inside = np.hypot(xx - center[0], yy - center[1]) < radius + 1
    assert patterns[0][inside].sum() / patterns[0].sum() > 0.9
    d = find_disks(patterns, radius, center, min_relative_intensity=0.05)
    v = (d["positions"] - d["positions"][np.arange(2), d["central"]][:, None]).reshape(-1, 2)
    w = d["intensity"].reshape(-1) * (np.linalg.norm(v, axis=1) > radius)
    ok = np.isfinite(v).all(1) & (w > 0)
    pts, strength = lattice_points(v[ok], w[ok], radius, 50)
    G = choose_basis(pts, strength, min_length=1.5 * radius)
    # First-order reflections of a hexagonal lattice: |g| = 2 / (sqrt(3) a).
    g = np.linalg.norm(G, axis=0) * cal.q_pixel_size
    np.testing.assert_allclose(g, 2 / (np.sqrt(3) * a), rtol=0.01)
    cosang = G[:, 0] @ G[:, 1] / np.prod(np.linalg.norm(G, axis=0))
    assert abs(cosang) == pytest.approx(0.5, abs=0.02)  # 60 or 120 degrees apart


def test_monolayer_heterostructure_truth_matches_its_patterns():
    """A small multislice WS2/WSe2 scan: the truth's lattice at every probe
    position is what the disks show (noise-free xcorr on the patterns), on
    both sides of the interface, with the boundary distance and phase right."""
    from stemae.simulate.multislice import WS2_A, WSE2_A, monolayer_heterostructure
    from stemae.strain import map_strain
    from stemae.strain.lattice import align_to_reference

    sim = monolayer_heterostructure((2, 8), 6.0, dose=None, background=0.0, margin=25.0)
    assert sim.data.shape == (2, 8, 193, 193)
    assert list(sim.truth["phase"][0]) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sim.truth["boundary"][0, 0] > 15 and sim.truth["boundary"][0, 3] < 5
    res = map_strain(sim.data * 1e6, method="xcorr", reference=((0, 2), (0, 2)))
    G = align_to_reference(np.stack([res["g1"], res["g2"]], -1).astype(float),
                           np.stack([sim.truth["g1"], sim.truth["g2"]], -1).astype(float))
    truth = np.stack([sim.truth["g1"], sim.truth["g2"]], -1)
    far = sim.truth["boundary"] > 15
    np.testing.assert_allclose(G[far], truth[far], atol=0.08)  # pixels, of |g| about 35
    # Strain is against each position's own phase: with it removed, the
    # lattices' areas differ by WSe2's 4.1 % larger spacing, squared.
    area = np.abs(np.linalg.det(truth[0].astype(float)))
    own = (1 + sim.truth["e_xx"][0]) * (1 + sim.truth["e_yy"][0]) - sim.truth["e_xy"][0] ** 2
    spacing = np.sqrt(area[0] * own[0] / (area * own))
    np.testing.assert_allclose(spacing, np.where(sim.truth["phase"][0] == 1, WSE2_A / WS2_A, 1.0), rtol=1e-4)


def test_probe_averaged_deformation_weighs_the_whole_probe_of_its_own_region():
    """The truth's average over abTEM's probe: exact for a uniform gradient,
    equal to the probe's intensity summed directly over the cell at a
    position between grid points (tails wrapped around the cell included),
    and blind to another region's lattice."""
    from stemae.simulate.multislice import _Field, probe_averaged_deformation

    ext = np.array([90.0, 80.0])
    M = np.array([[2e-3, -1e-3], [3e-3, -2e-3]])
    uniform = _Field([(M, ext / 2, 1e6)])  # a bump too wide to fall off: grad u = M everywhere
    pos = np.array([[37.3, 41.7], [5.2, 71.9]])
    F = probe_averaged_deformation(uniform, pos, ext, 80.0, 3.0)
    np.testing.assert_allclose(F, np.broadcast_to(np.eye(2) + M, F.shape), atol=1e-9)

    bump = _Field([(np.radians([[0, -0.6], [0.6, 0]]), (30.0, 45.0), 12.0)])  # a rotation 12 A wide
    F = probe_averaged_deformation(bump, pos, ext, 80.0, 3.0)
    probe = abtem.Probe(energy=80e3, semiangle_cutoff=3.0, extent=tuple(ext), sampling=0.5)
    waves = probe.build(scan=abtem.CustomScan(pos)).compute(progress_bar=False)
    intensity = np.abs(np.asarray(waves.array)) ** 2  # (P, nx, ny)
    gx, gy = np.meshgrid(np.arange(intensity.shape[1]) * 0.5, np.arange(intensity.shape[2]) * 0.5, indexing="ij")
    grad = bump(bump.invert(np.stack([gx.ravel(), gy.ravel()], 1)))[1].reshape(gx.shape + (2, 2))
    direct = np.eye(2) + np.einsum("pxy,xyij->pij", intensity, grad) / intensity.sum((1, 2))[:, None, None]
    np.testing.assert_allclose(F, direct, atol=2e-6)  # grad u up to 1e-2
    assert np.abs(F - np.eye(2)).max() > 1e-3  # the rotation is seen

    # Two regions split sharply at x = 50.25 A (between grid points) with
    # different uniform gradients: each position 12 A from the split sees
    # only its own (the probe's tails reach across, by about 2 % of its
    # intensity: 8e-4 of the 4e-2 expansion).
    split = _Field([(M, ext / 2, 1e6)], expansion=0.04, x_i=50.25, y_c=40.0, width=0.02)
    region = lambda xi: (xi[:, 0] > 50.25).astype(int)  # noqa: E731
    pos = np.array([[38.25, 40.0], [62.25, 40.0]])
    F = probe_averaged_deformation(split, pos, ext, 80.0, 3.0, region=region, own=np.array([0, 1]))
    np.testing.assert_allclose(F[0], np.eye(2) + M, atol=2e-5)
    np.testing.assert_allclose(np.diag(F[1]), 1 + np.diag(M) + 0.04, atol=2e-5)
    both = probe_averaged_deformation(split, pos, ext, 80.0, 3.0)
    assert abs(both[0, 0, 0] - F[0, 0, 0]) > 5e-4  # without the regions, the other lattice leaks in
