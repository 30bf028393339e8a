"""Lattice basis choice, indexing and weighted per-pattern lattice fits.

All functions work on padded batches: ``positions`` (B, N, 2) in ``(x, y)``
pixels with NaN for empty slots and ``weights`` (B, N) >= 0.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from stemae.geometry import (deformation_from_reciprocal, rotation_matrix, strain_from_deformation,
                             strain_uncertainty)

# Integer basis changes with det +1 and entries in {-1, 0, 1}: they contain
# the rotations of every 2D Bravais lattice expressed in a reduced basis.
_UNIMODULAR = np.array(
    [m for m in (np.array(v).reshape(2, 2) for v in itertools.product((-1, 0, 1), repeat=4)) if round(np.linalg.det(m)) == 1],
    dtype=np.float64,
)


def bragg_vector_map(vectors: np.ndarray, weights: np.ndarray, extent: float, bin_size: float = 0.5):
    """Weighted 2D histogram of disk vectors relative to the central beam.

    Parameters
    ----------
    vectors : ndarray, shape (M, 2), ``(x, y)`` pixels
    weights : ndarray, shape (M,)
    extent : float
        Half-width of the map in pixels.
    bin_size : float

    Returns
    -------
    hist : ndarray (n, n), rows along y; edges : ndarray (n + 1,)
    """
    n = int(np.ceil(2 * extent / bin_size))
    edges = np.linspace(-extent, extent, n + 1)
    hist, _, _ = np.histogram2d(vectors[:, 1], vectors[:, 0], bins=[edges, edges], weights=weights)
    return hist, edges


def lattice_points(vectors: np.ndarray, weights: np.ndarray, radius: float, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean reciprocal lattice points from many disk vectors.

    Peaks of the smoothed Bragg vector map, each refined as the weighted mean
    of the vectors within ``radius`` of it.

    Returns
    -------
    points : ndarray (K, 2) ``(x, y)``; strength : ndarray (K,), strongest first.
    """
    bin_size = 0.5
    hist, edges = bragg_vector_map(vectors, weights, extent, bin_size)
    sm = ndimage.gaussian_filter(hist, 1.0 / bin_size)
    k = int(max(3, round(radius / bin_size)))
    peak = (sm == ndimage.maximum_filter(sm, size=2 * k + 1)) & (sm > 0.02 * sm.max())
    iy, ix = np.nonzero(peak)
    centres = np.stack([edges[ix] + bin_size / 2, edges[iy] + bin_size / 2], -1)
    pts, strength = [], []
    for c in centres:
        sel = np.hypot(*(vectors - c).T) <= max(radius, 2.0)
        w = weights[sel]
        if w.sum() > 0:
            pts.append((vectors[sel] * w[:, None]).sum(0) / w.sum())
            strength.append(w.sum())
    pts, strength = np.array(pts).reshape(-1, 2), np.array(strength)
    order = np.argsort(-strength)
    return pts[order], strength[order]


def choose_basis(points: np.ndarray, strength: np.ndarray, min_length: float) -> np.ndarray:
    """A primitive reciprocal basis from mean lattice points.

    Points weaker than 2 % of the strongest are ignored. ``g1`` is the
    shortest remaining vector (the one closest to +x among those
    within 5 % of the shortest); ``g2`` is the shortest vector not parallel
    to ``g1`` making a right-handed pair (``det [g1 g2] > 0``), the smallest
    angle from ``g1`` winning ties. In 2D these two shortest independent
    vectors always form a primitive basis, on hexagonal lattices too. The
    basis is then refined by a least-squares fit to all indexed points and
    returned in reduced form (:func:`reduce_basis`), so that every basis
    stemae chooses follows one convention.

    Parameters
    ----------
    points : ndarray (K, 2); strength : ndarray (K,)
    min_length : float
        Points closer than this to the origin (the central beam) are ignored.

    Returns
    -------
    G : ndarray (2, 2), columns ``g1``, ``g2``.
    """
    keep = (np.linalg.norm(points, axis=1) > min_length) & (strength >= 0.02 * strength.max())
    pts = points[keep]
    if len(pts) < 2:
        raise ValueError("fewer than two Bragg reflections found in the reference region")
    L = np.linalg.norm(pts, axis=1)
    near = pts[L <= 1.05 * L.min()]
    g1 = near[np.argmin(np.abs(np.arctan2(near[:, 1], near[:, 0])))]
    cross = g1[0] * pts[:, 1] - g1[1] * pts[:, 0]
    indep = cross > 0.25 * np.linalg.norm(g1) * L  # > ~15 degrees and right-handed
    if not indep.any():
        raise ValueError("all Bragg reflections in the reference region lie on one line; no 2D lattice")
    cand = pts[indep]
    Lc = np.linalg.norm(cand, axis=1)
    near2 = cand[Lc <= 1.05 * Lc.min()]
    ang = np.arccos(np.clip(near2 @ g1 / (np.linalg.norm(near2, axis=1) * np.linalg.norm(g1)), -1, 1))
    g2 = near2[np.argmin(ang)]
    G = np.stack([g1, g2], 1)
    hk = np.linalg.solve(G, pts.T).T
    r = np.round(hk)
    ok = np.linalg.norm((hk - r) @ G.T, axis=1) < 0.15 * np.linalg.norm(g1)
    if ok.sum() >= 2:
        sol, *_ = np.linalg.lstsq(r[ok], pts[ok], rcond=None)  # pts = r @ G^T
        G = sol.T
    return reduce_basis(G)


def fit_lattice(
    positions: np.ndarray,
    weights: np.ndarray,
    central: np.ndarray,
    G0: np.ndarray,
    tolerance: float,
) -> dict[str, np.ndarray]:
    """Index disks against a guess and fit origin and basis per pattern.

    Disks are indexed by rounding their fractional coordinates in ``G0``
    relative to the central beam; those within ``tolerance`` pixels of a
    lattice site enter a weighted least-squares fit of
    ``p = origin + h g1 + k g2`` (the central beam is the (0, 0) reflection).

    Parameters
    ----------
    positions : ndarray (B, N, 2)
    weights : ndarray (B, N)
        Fit weights (disk intensity: position variance falls as 1/counts).
    central : ndarray of int (B,)
        Index of the central beam in ``positions``.
    G0 : ndarray (2, 2) or (B, 2, 2)
        Initial basis.
    tolerance : float
        Largest distance, in pixels, of an indexed disk from its site.

    Returns
    -------
    dict with ``origin`` (B, 2), ``G`` (B, 2, 2), ``cov`` (B, 4, 4) its
    covariance (row-major entries, see :func:`stemae.geometry.strain_uncertainty`)
    from the fit's residuals, ``n`` (B,) indexed disks
    besides the central beam, ``rms`` (B,) weighted RMS residual in pixels,
    ``fraction`` (B,) share of the non-central weight that indexed, and
    ``ok`` (B,) whether the fit is determined (three or more disks spanning
    two directions).
    """
    B, N, _ = positions.shape
    G0 = np.broadcast_to(np.asarray(G0, dtype=np.float64), (B, 2, 2))
    b = np.arange(B)
    origin0 = positions[b, central]
    v = positions - origin0[:, None]
    hk = np.einsum("bij,bnj->bni", np.linalg.inv(G0), np.nan_to_num(v))
    hkr = np.round(hk)
    resid = np.linalg.norm(np.nan_to_num(v) - np.einsum("bij,bnj->bni", G0, hkr), axis=-1)
    is_c = np.arange(N)[None] == central[:, None]
    finite = np.isfinite(positions).all(-1)
    use = finite & (weights > 0) & (is_c | ((resid < tolerance) & (hkr != 0).any(-1)))
    hkr = np.where(is_c[..., None], 0.0, hkr)
    w = np.where(use, weights, 0.0)
    D = np.concatenate([np.ones((B, N, 1)), hkr], -1)  # (B, N, 3): [1, h, k]
    Nm = np.einsum("bn,bni,bnj->bij", w, D, D)
    rhs = np.einsum("bn,bni,bnc->bic", w, D, np.nan_to_num(positions))  # (B, 3, 2)
    n_disks = (use & ~is_c).sum(1)
    hk_spread = Nm[:, 1:, 1:] - Nm[:, 1:, :1] * Nm[:, :1, 1:] / np.maximum(Nm[:, :1, :1], 1e-30)
    det = np.linalg.det(hk_spread)
    ok = (n_disks >= 3) & (det > 1e-9 * np.maximum(Nm[:, 0, 0], 1e-30) ** 2)
    Nm_safe = np.where(ok[:, None, None], Nm, np.eye(3))
    sol = np.linalg.solve(Nm_safe, rhs)  # rows: origin, g1, g2; cols: x, y
    origin = sol[:, 0, :]
    G = np.swapaxes(sol[:, 1:, :], 1, 2)  # columns g1, g2
    fitted = origin[:, None] + np.einsum("bij,bnj->bni", G, hkr)
    r2 = np.sum(np.nan_to_num(positions - fitted) ** 2, -1)
    rms = np.sqrt((w * r2).sum(1) / np.maximum(w.sum(1), 1e-30))
    wsum = np.where(finite & ~is_c, weights, 0.0).sum(1)
    fraction = np.where(~is_c, w, 0.0).sum(1) / np.maximum(wsum, 1e-30)
    # Covariance from the residuals: unit-weight variance over 2 n - 6
    # degrees of freedom (x and y share the design), times (D^T W D)^-1.
    dof = np.maximum(2 * (n_disks + 1) - 6, 1)
    s2 = (w * r2).sum(1) / dof
    Ninv = np.linalg.inv(Nm_safe)[:, 1:, 1:] * s2[:, None, None]  # (g1, g2) per coordinate
    cov = np.zeros((B, 4, 4))
    cov[:, :2, :2] = Ninv  # row-major G: (g1_x, g2_x, g1_y, g2_y)
    cov[:, 2:, 2:] = Ninv
    origin[~ok] = np.nan
    G[~ok] = np.nan
    cov[~ok] = np.nan
    return {"origin": origin, "G": G, "cov": cov, "n": n_disks, "rms": rms, "fraction": fraction, "ok": ok}


def orientation_search(
    positions: np.ndarray,
    weights: np.ndarray,
    central: np.ndarray,
    G_ref: np.ndarray,
    tolerance: float,
    step_deg: float = 1.0,
) -> np.ndarray:
    """Rotation of ``G_ref`` that indexes most disk weight, per pattern.

    Used for patterns the reference basis does not index (other grains).

    Returns
    -------
    ndarray (B,): best rotation in radians; ties go to the smallest angle.
    """
    B, N, _ = positions.shape
    b = np.arange(B)
    v = np.nan_to_num(positions - positions[b, central][:, None])
    is_c = np.arange(N)[None] == central[:, None]
    w = np.where(np.isfinite(positions).all(-1) & ~is_c, weights, 0.0)
    angles = np.radians(np.arange(-180.0, 180.0, step_deg))
    angles = angles[np.argsort(np.abs(angles), kind="stable")]
    best = np.full(B, -1.0)
    best_angle = np.zeros(B)
    for chunk in np.array_split(angles, max(1, len(angles) // 24)):
        Gs = rotation_matrix(chunk) @ G_ref  # (A, 2, 2)
        hk = np.einsum("aij,bnj->abni", np.linalg.inv(Gs), v)
        res = np.linalg.norm(v[None] - np.einsum("aij,abnj->abni", Gs, np.round(hk)), axis=-1)
        score = (((res < tolerance) & (np.abs(np.round(hk)).sum(-1) > 0)) * w[None]).sum(-1)  # (A, B)
        i = score.argmax(0)
        s = score[i, b]
        better = s > best * (1 + 1e-9)
        best = np.where(better, s, best)
        best_angle = np.where(better, chunk[i], best_angle)
    return best_angle


def align_to_reference(G: np.ndarray, G_ref: np.ndarray) -> np.ndarray:
    """Re-express each basis as the lattice-equivalent basis closest to ``G_ref``.

    A lattice has many bases (``G M`` for integer ``M`` with ``det M = 1``);
    rotations by a symmetry angle (60 degrees on hexagonal, 90 on square
    lattices) only relabel the reflections. Among the relabellings that are
    such symmetries (the basis keeps its lengths and angle, to 15 %), choosing the one
    nearest the reference makes rotations and strains continuous across a
    map. Shapes: ``G`` (..., 2, 2), ``G_ref`` (2, 2) or, one reference per
    basis, (..., 2, 2).
    """
    cand = np.einsum("...ij,mjk->...mik", G, _UNIMODULAR)
    dist = np.linalg.norm(cand - np.asarray(G_ref)[..., None, :, :], axis=(-2, -1))
    # Only relabellings that are symmetries of the lattice, to within the
    # distortion a strained or misfit lattice has (its metric within 15 %;
    # other relabellings change it by 50 % or more), so a sheared basis never
    # passes for a rotated one.
    metric = np.swapaxes(cand, -1, -2) @ cand
    own = np.swapaxes(G, -1, -2) @ G
    same = np.linalg.norm(metric - own[..., None, :, :], axis=(-2, -1)) <= 0.15 * np.linalg.norm(own, axis=(-2, -1))[..., None]
    dist = np.where(np.isfinite(dist) & same, dist, np.inf)
    i = dist.argmin(-1)
    return np.take_along_axis(cand, i[..., None, None, None], axis=-3)[..., 0, :, :]


def reduce_basis(G: np.ndarray) -> np.ndarray:
    """The reduced basis of a lattice (Lagrange-Gauss): the two shortest
    independent vectors, at an acute angle (60 rather than 120 degrees on a
    hexagonal lattice), right-handed (``det > 0``), ``g1`` the shorter.

    Parameters
    ----------
    G : ndarray (2, 2), columns g1, g2

    Returns
    -------
    ndarray (2, 2)
    """
    a, b = (np.asarray(G, dtype=np.float64)[:, i].copy() for i in range(2))
    for _ in range(100):
        if a @ a > b @ b:
            a, b = b, a
        m = np.round((a @ b) / (a @ a))
        if m == 0:
            break
        b = b - m * a
    if a @ b < 0:
        b = -b
    if a[0] * b[1] - a[1] * b[0] < 0:
        a, b = b, a
    return np.stack([a, b], 1)


def symmetry_angle(G: np.ndarray) -> float:
    """Smallest rotation (radians) that maps the lattice of basis ``G``
    (2, 2) onto itself, to 2 %: pi/3 for hexagonal, pi/2 for square, pi
    otherwise (every lattice has the half turn)."""
    G = np.asarray(G, dtype=np.float64)
    for angle in (np.pi / 3, np.pi / 2):
        turned = rotation_matrix(angle) @ G
        if np.linalg.norm(align_to_reference(turned, G) - G) < 0.02 * np.linalg.norm(G):
            return float(angle)
    return float(np.pi)


def relabel_covariance(cov: np.ndarray, G_old: np.ndarray, G_new: np.ndarray) -> np.ndarray:
    """Covariance (..., 4, 4) of a basis's row-major entries after the basis
    was relabelled from ``G_old`` to ``G_new = G_old M`` (integer ``M``),
    e.g. by :func:`align_to_reference`."""
    M = np.round(np.linalg.solve(np.nan_to_num(G_old) + np.isnan(G_old).any((-1, -2))[..., None, None] * np.eye(2),
                                 np.nan_to_num(G_new)))
    K = np.zeros(M.shape[:-2] + (4, 4))
    Mt = np.swapaxes(M, -1, -2)
    K[..., :2, :2] = Mt  # each row of G is multiplied by M from the right
    K[..., 2:, 2:] = Mt
    return K @ cov @ np.swapaxes(K, -1, -2)


#: The strain components of :func:`strain_against`'s ``strain`` and ``strain_std``, in order.
STRAIN_COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")


def strain_against(G: np.ndarray, cov: np.ndarray, bases: np.ndarray, phase: np.ndarray,
                   uncertainty: bool = True) -> dict[str, np.ndarray]:
    """Strain of each pattern against its phase's reference basis.

    Parameters
    ----------
    G : (B, 2, 2) local reciprocal bases, px (NaN where the fit failed)
    cov : (B, 4, 4) their covariance, px^2
    bases : (K, 2, 2) reference bases, px
    phase : (B,) each pattern's reference index
    uncertainty : also the standard deviations (False leaves ``strain_std``
        NaN, for a quick look)

    Returns
    -------
    dict: ``G`` (B, 2, 2) relabelled to the lattice-equivalent basis
    nearest the reference, ``transform`` (B, 2, 2) the deformation gradient
    ``F`` with ``a = F a_ref``, ``strain`` and ``strain_std`` (B, 4): e_xx,
    e_yy, e_xy (dimensionless) and theta (degrees) and their standard
    deviations
    """
    G = np.asarray(G, np.float64)
    cov = np.asarray(cov, np.float64)
    ok = np.isfinite(G).all((-1, -2)) & np.isfinite(cov).all((-1, -2))
    out = {"G": np.full(G.shape, np.nan), "transform": np.full(G.shape, np.nan),
           "strain": np.full((len(G), 4), np.nan), "strain_std": np.full((len(G), 4), np.nan)}
    for k in np.unique(phase[ok]):
        m = ok & (phase == k)
        ref = np.asarray(bases[k], np.float64)
        Gk = align_to_reference(G[m], ref)
        F = deformation_from_reciprocal(Gk, ref)
        s = strain_from_deformation(F)
        out["G"][m], out["transform"][m] = Gk, F
        out["strain"][m] = np.stack([s[c] for c in STRAIN_COMPONENTS], -1)
        if uncertainty:
            u = strain_uncertainty(Gk, ref, relabel_covariance(cov[m], G[m], Gk))
            out["strain_std"][m] = np.stack([u[c] for c in STRAIN_COMPONENTS], -1)
    return out
