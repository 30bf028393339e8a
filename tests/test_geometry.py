import numpy as np
import pytest

from stemae.geometry import (
    deformation_from_reciprocal,
    deformation_from_strain,
    frame_matrix,
    polar_decomposition,
    reciprocal_from_deformation,
    reference_mask,
    rotation_matrix,
    strain_from_deformation,
    strain_maps,
)


def test_rotation_sign_convention():
    # +x rotates towards +y for positive angles.
    v = rotation_matrix(np.pi / 2) @ np.array([1.0, 0.0])
    np.testing.assert_allclose(v, [0.0, 1.0], atol=1e-12)


def test_pure_rotation_by_hand():
    # A lattice rotated by 3 degrees: reciprocal vectors rotate the same way.
    G_ref = np.array([[10.0, 0.0], [0.0, 12.0]])
    G = rotation_matrix(np.radians(3.0)) @ G_ref
    s = strain_from_deformation(deformation_from_reciprocal(G, G_ref))
    assert s["theta"] == pytest.approx(3.0, abs=1e-12)
    for k in ("e_xx", "e_yy", "e_xy"):
        assert s[k] == pytest.approx(0.0, abs=1e-12)


def test_pure_uniaxial_strain_by_hand():
    # Real-space lattice 2 % longer along x: reciprocal g_x shrinks by 1/1.02.
    G_ref = np.array([[20.0, 0.0], [0.0, 20.0]])
    G = np.array([[20.0 / 1.02, 0.0], [0.0, 20.0]])
    F = deformation_from_reciprocal(G, G_ref)
    np.testing.assert_allclose(F, [[1.02, 0.0], [0.0, 1.0]], atol=1e-12)
    s = strain_from_deformation(F)
    assert s["e_xx"] == pytest.approx(0.02, abs=1e-12)
    assert s["e_yy"] == pytest.approx(0.0, abs=1e-12)
    assert s["theta"] == pytest.approx(0.0, abs=1e-12)


def test_reciprocal_inversion_by_hand():
    # Hexagonal real basis a1 = (a, 0), a2 = a (-1/2, sqrt(3)/2): reciprocal
    # basis (no 2 pi) obeys a_i . g_j = delta_ij, i.e. G = A^-T.
    a = 3.0
    A = a * np.array([[1.0, -0.5], [0.0, np.sqrt(3) / 2]])
    G = np.linalg.inv(A).T
    np.testing.assert_allclose(A.T @ G, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(G[:, 0], [1 / a, 1 / (np.sqrt(3) * a)], atol=1e-12)
    # Shear the real lattice: F A; the reciprocal basis is F^-T G.
    F = np.array([[1.0, 0.03], [0.0, 1.0]])
    G2 = reciprocal_from_deformation(F, G)
    np.testing.assert_allclose((F @ A).T @ G2, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(deformation_from_reciprocal(G2, G), F, atol=1e-12)


def test_polar_decomposition_exact_at_large_strain():
    rng = np.random.default_rng(1)
    e = rng.uniform(-0.2, 0.2, size=(3, 50))
    th = rng.uniform(-np.pi, np.pi, size=50)
    F = deformation_from_strain(e[0], e[1], e[2], th)
    R, U = polar_decomposition(F)
    np.testing.assert_allclose(R @ U, F, atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(R, -1, -2) @ R, np.broadcast_to(np.eye(2), R.shape), atol=1e-12)
    np.testing.assert_allclose(U, np.swapaxes(U, -1, -2), atol=1e-12)
    s = strain_from_deformation(F)
    np.testing.assert_allclose(s["e_xx"], e[0], atol=1e-12)
    np.testing.assert_allclose(s["e_yy"], e[1], atol=1e-12)
    np.testing.assert_allclose(s["e_xy"], e[2], atol=1e-12)
    np.testing.assert_allclose(np.radians(s["theta"]), th, atol=1e-12)


def test_mirror_gives_nan():
    R, U = polar_decomposition(np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert np.isnan(R).all() and np.isnan(U).all()


def test_strain_maps_relative_to_reference_box():
    G_ref = np.array([[20.0, 10.0], [0.0, 17.0]])
    G = np.broadcast_to(G_ref, (4, 6, 2, 2)).copy()
    F = deformation_from_strain(0.01, -0.005, 0.002, np.radians(0.5))
    G[:, 3:] = reciprocal_from_deformation(F, G_ref)
    valid = np.ones((4, 6), bool)
    valid[0, 5] = False
    maps, G0 = strain_maps(G, ((0, 4), (0, 3)), valid)
    np.testing.assert_allclose(G0, G_ref)
    np.testing.assert_allclose(maps["e_xx"][:, :3], 0, atol=1e-7)
    np.testing.assert_allclose(maps["e_xx"][1:, 3:], 0.01, atol=1e-6)
    np.testing.assert_allclose(maps["e_yy"][1:, 3:], -0.005, atol=1e-6)
    np.testing.assert_allclose(maps["e_xy"][1:, 3:], 0.002, atol=1e-6)
    np.testing.assert_allclose(maps["theta"][1:, 3:], 0.5, atol=1e-5)
    assert np.isnan(maps["e_xx"][0, 5])


@pytest.mark.parametrize("axis", [90.0, 30.0, -45.0])
def test_strain_along_a_chosen_axis_is_the_rotated_tensor(axis):
    """Strain reported along axes turned by ``axis`` is the tensor rotated
    into them (e_x'x' = e_xx c^2 + e_yy s^2 + 2 e_xy s c, ...), the rotation
    angle unchanged, and the standard deviations follow: at 90 degrees
    e_xx and e_yy (and their sigmas) swap and e_xy changes sign."""
    G_ref = np.array([[20.0, 10.0], [0.0, 17.0]])
    G = np.broadcast_to(G_ref, (2, 4, 2, 2)).copy()
    exx, eyy, exy, th = 0.012, -0.004, 0.003, 0.7
    G[:, 2:] = reciprocal_from_deformation(deformation_from_strain(exx, eyy, exy, np.radians(th)), G_ref)
    cov = np.broadcast_to(np.diag([1e-4, 4e-4, 9e-4, 1.6e-3]), (2, 4, 4, 4)).copy()
    ref = ((0, 2), (0, 2))
    plain, G0 = strain_maps(G, ref, cov=cov)
    turned, G1 = strain_maps(G, ref, cov=cov, frame=frame_matrix(strain_axis=axis))
    np.testing.assert_allclose(G1, G0)  # the reference stays in detector pixels
    c, s = np.cos(np.radians(axis)), np.sin(np.radians(axis))
    np.testing.assert_allclose(turned["e_xx"][:, 2:], exx * c * c + eyy * s * s + 2 * exy * s * c, atol=1e-6)
    np.testing.assert_allclose(turned["e_yy"][:, 2:], exx * s * s + eyy * c * c - 2 * exy * s * c, atol=1e-6)
    np.testing.assert_allclose(turned["e_xy"][:, 2:], (eyy - exx) * s * c + exy * (c * c - s * s), atol=1e-6)
    np.testing.assert_allclose(turned["theta"], plain["theta"], atol=1e-5)
    if axis == 90.0:
        np.testing.assert_allclose(turned["sigma_e_xx"], plain["sigma_e_yy"], rtol=1e-4)
        np.testing.assert_allclose(turned["sigma_e_yy"], plain["sigma_e_xx"], rtol=1e-4)
    # A detector whose y axis runs against the scan's mirrors shear and rotation.
    flipped, _ = strain_maps(G, ref, frame=frame_matrix(flip=True))
    np.testing.assert_allclose(flipped["e_xy"][:, 2:], -exy, atol=1e-6)
    np.testing.assert_allclose(flipped["theta"][:, 2:], -th, atol=1e-5)
    np.testing.assert_allclose(flipped["e_xx"], plain["e_xx"], atol=1e-7)


def test_reference_mask_errors():
    with pytest.raises(ValueError, match="selects no scan position"):
        reference_mask((4, 4), ((5, 6), (0, 2)))
    with pytest.raises(ValueError, match="expected the scan shape"):
        reference_mask((4, 4), np.ones((3, 3), bool))
    assert reference_mask((2, 3)).all()


def test_reference_of_one_noisy_lattice_is_accepted_two_lattices_are_not():
    """A reference region is refused as holding two lattices only when its
    positions differ from its median lattice beyond their own noise: a single
    lattice measured with 3 % scatter per element (a low-dose fit) is one
    lattice; two phases 4 % apart measured to 0.2 % are two."""
    rng = np.random.default_rng(0)
    G0 = np.array([[20.0, -10.0], [0.0, 17.3]])
    scatter = 0.03 * np.linalg.norm(G0) / 2  # per element, px
    noisy = G0 + rng.normal(0, scatter, (8, 8, 2, 2))
    cov = np.broadcast_to(scatter**2 * np.eye(4), (8, 8, 4, 4))
    with pytest.raises(ValueError, match="more than one lattice"):
        strain_maps(noisy, None)  # without uncertainties, the scatter looks like several lattices
    maps, G_ref = strain_maps(noisy, None, cov=cov)
    np.testing.assert_allclose(G_ref, G0, atol=4 * scatter / 8)
    assert np.nanmean(maps["sigma_e_xx"]) > np.nanstd(maps["e_xx"]) / 2
    two = np.where(np.arange(8)[None, :, None, None] < 4, G0, 1.04 * G0) + rng.normal(0, 0.002 * 17, (8, 8, 2, 2))
    with pytest.raises(ValueError, match="more than one lattice"):
        strain_maps(two, None, cov=np.broadcast_to((0.002 * 17) ** 2 * np.eye(4), (8, 8, 4, 4)))
