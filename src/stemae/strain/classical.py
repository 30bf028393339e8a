"""Classical strain mapping: Bragg-disk detection plus per-pattern lattice fits.

The correlation method follows the py4DSTEM approach (template
cross-correlation, sub-pixel refinement, basis vectors, lattice fit, strain
relative to a reference region), batched and vectorised. The ``com``
variant refines each disk by its intensity centroid instead and also
returns the whole-pattern centre of mass.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from stemae.data.blocks import iter_row_blocks, read_patterns, rows_for_budget
from stemae.geometry import reference_mask, rotation_matrix, strain_maps
from stemae.strain.disks import center_of_mass, estimate_probe, find_disks
from stemae.strain.lattice import align_to_reference, fit_lattice, orientation_search, relabel_covariance
from stemae.strain.pooled import pooled_basis

METHODS = ("xcorr", "com")


def _sample_patterns(data, n: int = 64) -> np.ndarray:
    """Up to ``n`` patterns spread over the scan, float32 (n, Qy, Qx)."""
    Ry, Rx = data.shape[:2]
    k = int(np.ceil(np.sqrt(n)))
    rows = np.unique(np.linspace(0, Ry - 1, min(k, Ry)).round().astype(int))
    cols = np.unique(np.linspace(0, Rx - 1, min(k, Rx)).round().astype(int))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return read_patterns(data, rr.ravel(), cc.ravel())


def detect_disks(
    data,
    *,
    method: str = "xcorr",
    radius: float | None = None,
    progress: bool = False,
    **find_kwargs,
) -> dict[str, np.ndarray]:
    """Detect Bragg disks in every pattern of a datacube, streaming by scan rows.

    Parameters
    ----------
    data : array-like, shape (Ry, Rx, Qy, Qx)
        NumPy, Dask, h5py or zarr array.
    method : {"xcorr", "com"}
    radius : float, optional
        Disk radius in pixels; estimated from the central beam by default.
    progress : bool
        Show a progress bar.
    **find_kwargs
        Passed to :func:`stemae.strain.disks.find_disks`.

    Returns
    -------
    dict with ``positions`` (Ry, Rx, N, 2), ``intensity`` (Ry, Rx, N),
    ``central`` (Ry, Rx), ``radius`` (float, px), ``center`` (2,) and, for
    ``com``, the whole-pattern centre of mass ``com`` (Ry, Rx, 2).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    Ry, Rx, Qy, Qx = data.shape
    center, est_radius = estimate_probe(_sample_patterns(data))
    radius = est_radius if radius is None else float(radius)
    rows = rows_for_budget(data.shape, 32 * 2**20)
    out = {"positions": [], "intensity": [], "central": [], "com": []}
    bar = tqdm(total=Ry * Rx, unit="pattern", desc=f"disks ({method})", disable=not progress, leave=False)
    for _, block in iter_row_blocks(data, rows):
        flat = block.reshape(-1, Qy, Qx)
        d = find_disks(flat, radius, center, refine=method, **find_kwargs)
        for k in ("positions", "intensity", "central"):
            out[k].append(d[k])
        if method == "com":
            out["com"].append(center_of_mass(flat))
        bar.update(len(flat))
    bar.close()
    N = max(p.shape[1] for p in out["positions"])
    pad = lambda a, fill: np.pad(a, [(0, 0), (0, N - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
    res = {
        "positions": np.concatenate([pad(p, np.nan) for p in out["positions"]]).reshape(Ry, Rx, N, 2),
        "intensity": np.concatenate([pad(p, 0.0) for p in out["intensity"]]).reshape(Ry, Rx, N),
        "central": np.concatenate(out["central"]).reshape(Ry, Rx),
        "radius": radius,
        "center": center,
    }
    if method == "com":
        res["com"] = np.concatenate(out["com"]).reshape(Ry, Rx, 2)
    return res


def fit_lattices(disks: dict, G_ref: np.ndarray, tolerance: float | None = None) -> dict:
    """Fit every pattern's lattice, indexed against a basis.

    Patterns the basis does not index (other grains) get the rotation of
    ``G_ref`` that indexes most of their disks (:func:`orientation_search`).

    Parameters
    ----------
    disks : dict from :func:`detect_disks`
    G_ref : ndarray (2, 2)
        Basis to index against (columns g1, g2, pixels), e.g. from
        :func:`stemae.strain.pooled.pooled_basis`.
    tolerance : float, optional
        Indexing tolerance in pixels; default 15 % of the shorter basis
        vector for the first pass, then half that.

    Returns
    -------
    dict with ``G`` (Ry, Rx, 2, 2), ``cov`` (Ry, Rx, 4, 4) its covariance,
    ``origin`` (Ry, Rx, 2), ``valid``, ``n_disks``, ``rms`` (Ry, Rx) and
    ``basis`` (2, 2), the basis indexed against.
    """
    pos, inten, central = disks["positions"], disks["intensity"], disks["central"]
    Ry, Rx, N, _ = pos.shape
    P, W, C = pos.reshape(-1, N, 2), inten.reshape(-1, N), central.reshape(-1)
    gmin = np.linalg.norm(G_ref, axis=0).min()
    tol = 0.15 * gmin if tolerance is None else tolerance

    fit = fit_lattice(P, W, C, G_ref, tol)
    lost = ~fit["ok"] | (fit["fraction"] < 0.6)
    if lost.any():
        ang = orientation_search(P[lost], W[lost], C[lost], G_ref, tol)
        G0 = np.broadcast_to(G_ref, (len(P), 2, 2)).copy()
        G0[lost] = rotation_matrix(ang) @ G_ref
        redo = fit_lattice(P[lost], W[lost], C[lost], G0[lost], tol)
        for k in fit:
            fit[k][lost] = redo[k]
    G0 = np.where(fit["ok"][:, None, None], fit["G"], G_ref)
    fit = fit_lattice(P, W, C, G0, 0.5 * tol)
    G = np.full_like(fit["G"], np.nan)
    cov = np.full_like(fit["cov"], np.nan)
    ok = fit["ok"]
    G[ok] = align_to_reference(fit["G"][ok], G_ref)
    cov[ok] = relabel_covariance(fit["cov"][ok], fit["G"][ok], G[ok])
    return {
        "G": G.reshape(Ry, Rx, 2, 2),
        "cov": cov.reshape(Ry, Rx, 4, 4),
        "origin": fit["origin"].reshape(Ry, Rx, 2),
        "valid": ok.reshape(Ry, Rx),
        "n_disks": fit["n"].reshape(Ry, Rx),
        "rms": fit["rms"].reshape(Ry, Rx),
        "basis": G_ref,
    }


def map_strain(
    data,
    *,
    method: str = "xcorr",
    reference=None,
    radius: float | None = None,
    max_rms: float | None = None,
    frame: np.ndarray | None = None,
    progress: bool = False,
    **find_kwargs,
) -> dict:
    """Strain maps of a datacube by classical Bragg-disk methods.

    Parameters
    ----------
    data : array-like, shape (Ry, Rx, Qy, Qx)
    method : {"xcorr", "com"}
        Disk refinement: template cross-correlation (py4DSTEM-like) or
        intensity centroid.
    reference : None, bool mask (Ry, Rx) or ((r0, r1), (c0, c1))
        Unstrained reference region (robust mean lattice); whole scan by default.
    radius : float, optional
        Disk radius in pixels; estimated by default.
    max_rms : float, optional
        Fits with a weighted RMS residual above this (pixels) are marked
        invalid; default a quarter of the disk radius.
    frame : ndarray (2, 2), optional
        Axes of the strain maps (:func:`~stemae.geometry.frame_matrix`);
        detector axes by default.
    progress : bool
    **find_kwargs
        Passed to :func:`stemae.strain.disks.find_disks`.

    The basis is chosen on the reference region's patterns summed on their
    central beams (:func:`stemae.strain.pooled.pooled_basis`), which shows
    the lattice at doses where single patterns do not; a warning says when
    it does not explain that sum.

    Returns
    -------
    dict with float32 maps ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless),
    ``theta`` (degrees) and their standard deviations ``sigma_e_xx``, ...
    ``sigma_theta`` (from each lattice fit's residuals and the reference's
    own scatter), ``valid`` (bool), ``g1``, ``g2`` (Ry, Rx, 2) and
    ``origin`` (Ry, Rx, 2) in detector pixels ``(x, y)``, ``n_disks``,
    ``rms`` (pixels), ``com`` (for ``method="com"``), and the metadata
    ``g_ref`` (2, 2), ``radius`` (px), ``method`` and ``indexing`` (the
    :func:`~stemae.strain.pooled.lattice_check` of the reference sum).
    """
    mask = reference_mask(data.shape[:2], reference)
    G_pool, check, _, _ = pooled_basis(data, mask, radius=radius)
    disks = detect_disks(data, method=method, radius=check["radius"], progress=progress, **find_kwargs)
    fit = fit_lattices(disks, G_pool)
    limit = 0.25 * disks["radius"] if max_rms is None else max_rms
    valid = fit["valid"] & (fit["rms"] <= limit)
    maps, G_ref = strain_maps(fit["G"], mask, valid, cov=fit["cov"], frame=frame)
    out = dict(maps)
    out.update(
        reference=mask,
        valid=valid,
        g1=fit["G"][..., :, 0].astype(np.float32),
        g2=fit["G"][..., :, 1].astype(np.float32),
        origin=fit["origin"].astype(np.float32),
        n_disks=fit["n_disks"].astype(np.int16),
        rms=fit["rms"].astype(np.float32),
        g_ref=G_ref,
        radius=disks["radius"],
        method=method,
        indexing=check,
    )
    if "com" in disks:
        out["com"] = disks["com"].astype(np.float32)
    return out
