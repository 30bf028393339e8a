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
