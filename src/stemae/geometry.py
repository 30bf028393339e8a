"""Strain maths and the one place where axis and sign conventions live.

Conventions (stored in every results file as the ``conventions`` attribute):

- Datacubes are ``(Ry, Rx, Qy, Qx)``: scan row, scan column, detector row,
  detector column.
- A vector in the detector plane is ``(x, y)`` with ``x`` along detector
  columns (``Qx``, increasing to the right) and ``y`` along detector rows
  (``Qy``, increasing downwards), in detector pixels unless a calibration
  says otherwise. Note that py4DSTEM names the *row* axis ``x``; stemae does
  not.
- A 2D lattice basis is a ``(..., 2, 2)`` matrix whose *columns* are the
  basis vectors ``g1`` and ``g2`` in ``(x, y)`` components.
- The local real-space deformation ``F`` maps the reference lattice onto the
  local one: ``a = F a_ref`` for real-space lattice vectors, hence
  ``g = F^-T g_ref`` for reciprocal ones.
- ``F = R U`` (right polar decomposition, exact, no small-strain shortcut).
  ``U`` is the symmetric stretch in detector ``(x, y)`` axes, applied
  before the rotation ``R``; ``e_xx = U_xx - 1``, ``e_yy = U_yy - 1``, ``e_xy = U_xy`` (tensor, not
  engineering, shear). Positive strain is tensile in real space.
- ``theta`` is the angle of ``R``: positive rotates ``+x`` towards ``+y``,
  which is clockwise on screen when images are drawn with row 0 at the top.
  Degrees in results, radians inside the code.
"""

from __future__ import annotations

import numpy as np


def wall_angle(wave: np.ndarray) -> np.ndarray:
    """Angle of the walls of stripes with wave vectors ``(..., 2)`` ``(kx, ky)``:
    degrees in [-90, 90) from ``+x`` towards ``+y`` (walls are normal to the
    wave vector; axial, so ``k`` and ``-k`` give the same angle)."""
    return np.remainder(np.rad2deg(np.arctan2(wave[..., 1], wave[..., 0])), 180.0) - 90.0


def rotation_matrix(theta: np.ndarray | float) -> np.ndarray:
    """Rotation matrices ``(..., 2, 2)`` for angles ``theta`` (radians).

    Positive angles rotate ``+x`` towards ``+y``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def deformation_from_strain(e_xx, e_yy, e_xy, theta) -> np.ndarray:
    """Deformation gradient ``F = R(theta) U`` from strain components.

    Parameters
    ----------
    e_xx, e_yy, e_xy : array_like, shape (...)
        Components of ``U - I`` (dimensionless, tensor shear).
    theta : array_like, shape (...)
        Rotation in radians.

    Returns
    -------
    F : ndarray, shape (..., 2, 2)
    """
    e_xx, e_yy, e_xy, theta = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (e_xx, e_yy, e_xy, theta))
    )
    U = np.stack([np.stack([1 + e_xx, e_xy], -1), np.stack([e_xy, 1 + e_yy], -1)], -2)
    return rotation_matrix(theta) @ U


def polar_decomposition(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact right polar decomposition ``F = R U`` of 2x2 matrices.

    Parameters
    ----------
    F : ndarray, shape (..., 2, 2)
        Deformation gradients with positive determinant.

    Returns
    -------
    R : ndarray, shape (..., 2, 2)
        Proper rotations.
    U : ndarray, shape (..., 2, 2)
        Symmetric positive-definite stretches, ``U = sqrt(F^T F)``.

    Notes
    -----
    For a 2x2 symmetric positive-definite ``C``,
    ``sqrt(C) = (C + sqrt(det C) I) / sqrt(tr C + 2 sqrt(det C))``.
    Entries with ``det F <= 0`` (mirror or collapsed) give NaN.
    """
    F = np.asarray(F, dtype=np.float64)
    C = np.swapaxes(F, -1, -2) @ F
    with np.errstate(invalid="ignore"):
        det_F = np.linalg.det(F)
    bad = ~(det_F > 0)
    sq = np.where(bad, np.nan, np.abs(det_F))  # sqrt(det C) = |det F|
    tr = C[..., 0, 0] + C[..., 1, 1]
    denom = np.sqrt(tr + 2 * sq)
    U = (C + sq[..., None, None] * np.eye(2)) / denom[..., None, None]
    R = F @ np.linalg.inv(np.where(bad[..., None, None], np.eye(2), U))
    R[bad] = np.nan
    return R, U


def deformation_from_reciprocal(G: np.ndarray, G_ref: np.ndarray) -> np.ndarray:
    """Real-space deformation from reciprocal lattice bases.

    Parameters
    ----------
    G : ndarray, shape (..., 2, 2)
        Local reciprocal bases, columns ``g1``, ``g2`` (any consistent units).
    G_ref : ndarray, shape (2, 2) or (..., 2, 2)
        Reference reciprocal basis in the same units and indexing.

    Returns
    -------
    F : ndarray, shape (..., 2, 2)
        ``F = (G_ref G^-1)^T`` so that ``a = F a_ref`` for real-space vectors.
    """
    G = np.asarray(G, dtype=np.float64)
    G_ref = np.asarray(G_ref, dtype=np.float64)
    return np.swapaxes(G_ref @ np.linalg.inv(G), -1, -2)


def reciprocal_from_deformation(F: np.ndarray, G_ref: np.ndarray) -> np.ndarray:
    """Local reciprocal basis ``G = F^-T G_ref``; inverse of
    :func:`deformation_from_reciprocal`. Shapes ``(..., 2, 2)``."""
    F = np.asarray(F, dtype=np.float64)
    return np.swapaxes(np.linalg.inv(F), -1, -2) @ np.asarray(G_ref, dtype=np.float64)


def reference_mask(scan_shape: tuple[int, int], reference=None) -> np.ndarray:
    """Boolean reference mask of shape ``scan_shape``.

    Parameters
    ----------
    scan_shape : (Ry, Rx)
    reference : None, boolean array of shape ``scan_shape``, or a box
        ``((r0, r1), (c0, c1))`` of half-open scan row and column ranges.
        ``None`` means the whole scan.
    """
    if reference is None:
        return np.ones(scan_shape, dtype=bool)
    if isinstance(reference, np.ndarray) and reference.dtype == bool:
        if reference.shape != tuple(scan_shape):
            raise ValueError(
                f"reference mask has shape {reference.shape}, expected the scan shape {tuple(scan_shape)}"
            )
        return reference.copy()
    try:
        (r0, r1), (c0, c1) = reference
    except (TypeError, ValueError):
        raise ValueError(
            f"reference must be a boolean mask or ((r0, r1), (c0, c1)), got {reference!r}"
        ) from None
    mask = np.zeros(scan_shape, dtype=bool)
    mask[int(r0) : int(r1), int(c0) : int(c1)] = True
    if not mask.any():
        raise ValueError(
            f"reference box rows {r0}:{r1}, cols {c0}:{c1} selects no scan position "
            f"of a {scan_shape[0]}x{scan_shape[1]} scan"
        )
    return mask


#: A reference region holds more than one lattice when more than a quarter
#: of its positions' bases differ from its median basis by more than this
#: (relative, Frobenius) and by more than three of their own standard
#: deviations: phases 4 % apart, or grains turned by degrees, do; one
#: lattice with strain and counting noise does not, however noisy.
REFERENCE_SPREAD = 0.02


def reference_members(G: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None,
                      cov: np.ndarray | None = None) -> np.ndarray:
    """Positions whose bases make up the reference: valid positions in the
    region, less outliers further than four (normal-scaled) median absolute
    deviations from the element-wise median. Shapes: ``G`` (Ry, Rx, 2, 2),
    masks (Ry, Rx), ``cov`` (Ry, Rx, 4, 4) the bases' covariance (row-major
    entries; a position's distance from the median counts against one
    lattice only beyond three of its standard deviations); returns a bool
    (Ry, Rx).

    Raises
    ------
    ValueError
        The region holds no valid fit, or more than one lattice
        (:data:`REFERENCE_SPREAD`): its mean would be no lattice at all.
    """
    sel = mask if valid is None else (mask & valid)
    sel = sel & np.isfinite(G).all(axis=(-1, -2))
    if not sel.any():
        raise ValueError("the reference region holds no valid lattice fit")
    g = G[sel]
    med = np.median(g, axis=0)
    spread = np.linalg.norm(g - med, axis=(-1, -2)) / np.linalg.norm(med)
    far = spread > REFERENCE_SPREAD
    if cov is not None:  # noise alone moves a position by about sqrt(trace(cov)); unknown (NaN) noise explains nothing
        noise = np.sqrt(np.trace(np.asarray(cov, np.float64)[sel], axis1=-2, axis2=-1)) / np.linalg.norm(med)
        far &= ~(spread <= 3 * noise)
    if far.mean() > 0.25:
        raise ValueError(
            f"the reference region holds more than one lattice: {far.sum()} of its {far.size} positions differ "
            f"from its median lattice by more than {REFERENCE_SPREAD:.0%} (phases, grains or rotations), so their "
            "mean is no lattice at all; choose a region of one phase or grain (on the command line "
            "--reference R0:R1,C0:C1, or --reference-phase K with ccstae)"
        )
    mad = 1.4826 * np.median(np.abs(g - med), axis=0)
    keep = (np.abs(g - med) <= 4 * mad + 1e-12 * np.abs(med).max()).all(axis=(-1, -2))
    out = np.zeros(sel.shape, bool)
    out[sel] = keep if keep.any() else True
    return out


def strain_from_deformation(F: np.ndarray) -> dict[str, np.ndarray]:
    """Strain maps from deformation gradients.

    Parameters
    ----------
    F : ndarray, shape (..., 2, 2)

    Returns
    -------
    dict with ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless) and ``theta``
    (degrees), each of shape (...).
    """
    R, U = polar_decomposition(F)
    return {
        "e_xx": U[..., 0, 0] - 1.0,
        "e_yy": U[..., 1, 1] - 1.0,
        "e_xy": U[..., 0, 1],
        "theta": np.degrees(np.arctan2(R[..., 1, 0], R[..., 0, 0])),
    }


def frame_matrix(strain_axis: float = 0.0, scan_rotation: float = 0.0, flip: bool = False) -> np.ndarray:
    """The orthogonal ``(2, 2)`` matrix taking detector ``(x, y)`` vectors to
    the frame strain is reported in.

    Parameters
    ----------
    strain_axis : angle (degrees, in scan axes, from ``+x`` towards ``+y``)
        of the frame's ``x`` axis, e.g. along an interface
    scan_rotation : angle (degrees) of the scan's ``x`` axis as seen on the
        detector, from detector ``+x`` towards ``+y``
    flip : the detector's ``y`` axis runs against the scan's (applied first)
    """
    def rot(deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        return np.array([[c, -s], [s, c]])

    return rot(-strain_axis) @ rot(-scan_rotation) @ np.diag([1.0, -1.0 if flip else 1.0])


def change_frame(G: np.ndarray, cov: np.ndarray | None, M: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Bases ``(..., 2, 2)`` and their covariances ``(..., 4, 4)`` (row-major
    entries, as :func:`strain_uncertainty`) in the frame of ``M``
    (:func:`frame_matrix`): ``G' = M G``. Strain against a reference in the
    same frame is then ``U' = M U M^T``: the tensor in the new axes."""
    G2 = np.einsum("ij,...jk->...ik", M, G)
    if cov is None:
        return G2, None
    K = np.kron(M, np.eye(2))
    return G2, np.einsum("ij,...jk,lk->...il", K, cov, K)


def strain_maps(
    G: np.ndarray, reference=None, valid: np.ndarray | None = None, cov: np.ndarray | None = None,
    frame: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Strain and rotation maps from per-position reciprocal bases.

    Parameters
    ----------
    G : ndarray, shape (Ry, Rx, 2, 2)
        Reciprocal bases (columns ``g1``, ``g2``), consistently indexed.
    reference : see :func:`reference_mask`
        Region whose mean lattice (over :func:`reference_members`) is the
        unstrained reference.
    valid : ndarray of bool, shape (Ry, Rx), optional
        Positions whose fit succeeded; invalid ones get NaN.
    cov : ndarray (Ry, Rx, 4, 4), optional
        Covariance of each basis (see :func:`strain_uncertainty`); adds the
        standard deviations ``sigma_e_xx``, ``sigma_e_yy``, ``sigma_e_xy``
        and ``sigma_theta`` (degrees), the reference's uncertainty included.
    frame : ndarray (2, 2), optional
        :func:`frame_matrix`: the strain tensor and rotation in those axes
        (scan axes, an interface); detector axes by default.

    Returns
    -------
    maps : dict of ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless) and ``theta``
        (degrees), float32 arrays of shape (Ry, Rx) (and their ``sigma_``
        maps when ``cov`` is given).
    G_ref : ndarray, shape (2, 2)
        The reference basis used (detector axes).
    """
    G = np.asarray(G, dtype=np.float64)
    mask = reference_mask(G.shape[:2], reference)
    members = reference_members(G, mask, valid, cov)
    G_det = G_ref = G[members].mean(axis=0)
    if frame is not None:
        G, cov = change_frame(G, None if cov is None else np.asarray(cov, dtype=np.float64), frame)
        G_ref = frame @ G_det
    ok = np.isfinite(G).all(axis=(-1, -2)) & (np.abs(np.linalg.det(np.nan_to_num(G))) > 0)
    if valid is not None:
        ok &= valid
    F = np.full(G.shape, np.nan)
    F[ok] = deformation_from_reciprocal(G[ok], G_ref)
    maps = {k: v.astype(np.float32) for k, v in strain_from_deformation(F).items()}
    if cov is not None:
        cov = np.nan_to_num(np.asarray(cov, dtype=np.float64))
        cov_ref = cov[members].mean(axis=0) / members.sum()
        G_ok = np.where(ok[..., None, None], G, G_ref)
        total = strain_uncertainty(G_ok, G_ref, cov, cov_ref)
        for k in total:
            maps[f"sigma_{k}"] = np.where(ok, total[k], np.nan).astype(np.float32)
    return maps, G_det


def _strain_vector(G: np.ndarray, G_ref: np.ndarray) -> np.ndarray:
    """``(e_xx, e_yy, e_xy, theta in radians)`` (..., 4) of bases G against G_ref."""
    R, U = polar_decomposition(deformation_from_reciprocal(G, G_ref))
    return np.stack([U[..., 0, 0] - 1, U[..., 1, 1] - 1, U[..., 0, 1], np.arctan2(R[..., 1, 0], R[..., 0, 0])], -1)


def strain_uncertainty(G: np.ndarray, G_ref: np.ndarray, cov: np.ndarray, cov_ref: np.ndarray | None = None) -> dict:
    """Standard deviations of the strain maps from the covariance of the bases.

    First-order propagation through the exact strain maths (numerical
    Jacobians), the reference basis's own uncertainty included.

    Parameters
    ----------
    G : ndarray (..., 2, 2)
        Local reciprocal bases.
    G_ref : ndarray (2, 2)
        Reference basis.
    cov : ndarray (..., 4, 4)
        Covariance of each basis's entries in row-major order
        ``(G_00, G_01, G_10, G_11)`` = ``(g1_x, g2_x, g1_y, g2_y)``, in the
        units of ``G`` squared.
    cov_ref : ndarray (4, 4), optional
        Covariance of ``G_ref``'s entries (for a mean over ``n`` positions,
        about the mean covariance divided by ``n``).

    Returns
    -------
    dict of ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless) and ``theta``
    (degrees) standard deviations, each (...), float32.
    """
    G = np.asarray(G, dtype=np.float64)
    G_ref = np.asarray(G_ref, dtype=np.float64)
    eps = 1e-6 * np.abs(G_ref).max()
    Jg = np.empty(G.shape[:-2] + (4, 4))
    Jr = np.empty(G.shape[:-2] + (4, 4))
    for k in range(4):
        d = np.zeros(4)
        d[k] = eps
        d = d.reshape(2, 2)
        Jg[..., k] = (_strain_vector(G + d, G_ref) - _strain_vector(G - d, G_ref)) / (2 * eps)
        Jr[..., k] = (_strain_vector(G, G_ref + d) - _strain_vector(G, G_ref - d)) / (2 * eps)
    C = Jg @ np.asarray(cov, dtype=np.float64) @ np.swapaxes(Jg, -1, -2)
    if cov_ref is not None:
        C = C + Jr @ np.asarray(cov_ref, dtype=np.float64) @ np.swapaxes(Jr, -1, -2)
    sd = np.sqrt(np.clip(np.diagonal(C, axis1=-2, axis2=-1), 0, None))
    sd[..., 3] = np.degrees(sd[..., 3])
    return {k: sd[..., i].astype(np.float32) for i, k in enumerate(("e_xx", "e_yy", "e_xy", "theta"))}
