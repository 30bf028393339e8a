"""Classical strain mapping: Bragg-disk detection plus per-pattern lattice fits.

The correlation method follows the py4DSTEM approach (template
cross-correlation, sub-pixel refinement, basis vectors, lattice fit, strain
relative to a reference region), batched and vectorised. The ``com``
variant refines each disk by its intensity centroid instead and also
returns the whole-pattern centre of mass.
"""

from __future__ import annotations

import numpy as np

from stemae.data.blocks import read_patterns
from stemae.geometry import reference_mask, rotation_matrix, strain_maps
from stemae.runner import run
from stemae.strain.diagnostics import DIAGNOSTICS, batch_statistics, finish_statistics, statistics_results
from stemae.strain.disks import center_of_mass, estimate_probe, find_disks
from stemae.strain.lattice import align_to_reference, fit_lattice, orientation_search, relabel_covariance
from stemae.strain.pooled import pooled_basis

CLASSICAL_METHODS = ("xcorr", "com")
KIND = "classical"


def _sample_patterns(data, n: int = 64) -> np.ndarray:
    """Up to ``n`` patterns spread over the scan, float32 (n, Qy, Qx)."""
    Ry, Rx = data.shape[:2]
    k = int(np.ceil(np.sqrt(n)))
    rows = np.unique(np.linspace(0, Ry - 1, min(k, Ry)).round().astype(int))
    cols = np.unique(np.linspace(0, Rx - 1, min(k, Rx)).round().astype(int))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return read_patterns(data, rr.ravel(), cc.ravel())


def fit_state(data, *, method: str = "xcorr", reference=None, radius: float | None = None,
              max_rms: float | None = None, tolerance: float | None = None, **find_kwargs) -> dict:
    """What the per-batch step of a classical method needs, from a small pass
    over the data: the probe (centre and radius, from patterns spread over
    the scan) and the basis to index against, chosen on the reference
    region's patterns summed on their central beams
    (:func:`stemae.strain.pooled.pooled_basis`, which shows the lattice at
    doses where single patterns do not; a warning says when it does not
    explain that sum).

    Parameters
    ----------
    data : array-like (Ry, Rx, Qy, Qx)
    method : ``"xcorr"`` or ``"com"``
    reference : None, bool mask (Ry, Rx) or ((r0, r1), (c0, c1))
    radius : disk radius in pixels; estimated by default
    max_rms : largest weighted RMS residual (px) of a valid fit; default a
        quarter of the disk radius
    tolerance : indexing tolerance (px); default 15 % of the shorter basis
        vector, then half that
    **find_kwargs : passed to :func:`stemae.strain.disks.find_disks`

    Returns
    -------
    dict with ``method``, ``radius`` (px), ``center`` (2,) ``(x, y)`` px,
    ``basis`` (2, 2) columns g1, g2 in px, ``max_rms``, ``tolerance``,
    ``find`` (the keyword arguments) and ``indexing`` (the
    :func:`~stemae.strain.pooled.lattice_check` of the reference sum)
    """
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"method must be one of {CLASSICAL_METHODS}, got {method!r}")
    mask = reference_mask(data.shape[:2], reference)
    basis, check, _, _ = pooled_basis(data, mask, radius=radius)
    center, _ = estimate_probe(_sample_patterns(data))
    return {"method": method, "radius": float(check["radius"]), "center": np.asarray(center, np.float64),
            "basis": np.asarray(basis, np.float64), "max_rms": None if max_rms is None else float(max_rms),
            "tolerance": None if tolerance is None else float(tolerance), "find": dict(find_kwargs),
            "indexing": check}


def fit_lattices(positions: np.ndarray, intensity: np.ndarray, central: np.ndarray, G_ref: np.ndarray,
                 tolerance: float | None = None) -> dict:
    """Fit every pattern's lattice to its detected disks, indexed against a basis.

    Patterns the basis does not index (other grains) get the rotation of
    ``G_ref`` that indexes most of their disks (:func:`orientation_search`).

    Parameters
    ----------
    positions : (B, N, 2) disk positions ``(x, y)`` px (NaN for none),
        ``intensity`` (B, N) and ``central`` (B,) the central beam's index,
        as :func:`~stemae.strain.disks.find_disks` gives them
    G_ref : ndarray (2, 2)
        Basis to index against (columns g1, g2, pixels).
    tolerance : float, optional
        Indexing tolerance in pixels; default 15 % of the shorter basis
        vector for the first pass, then half that.

    Returns
    -------
    dict with ``G`` (B, 2, 2), ``cov`` (B, 4, 4) its covariance, ``origin``
    (B, 2), ``valid``, ``n_disks`` and ``rms`` (B,)
    """
    P, W, C = positions, intensity, central
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
    return {"G": G, "cov": cov, "origin": fit["origin"], "valid": ok, "n_disks": fit["n"], "rms": fit["rms"]}


class ClassicalStep:
    """The classical methods' per-batch step (see :mod:`stemae.runner`):
    with a state from :func:`fit_state`, patterns ``(B, Qy, Qx)`` to their
    disks (:func:`~stemae.strain.disks.find_disks`), lattice fits
    (:func:`fit_lattices`), the whole-pattern centre of mass (``com``) and
    the diagnostics' per-batch part."""

    signal_ndim = 2

    def __init__(self, state: dict, pattern_shape: tuple[int, int]):
        self.state, self.pattern_shape = state, tuple(int(v) for v in pattern_shape)

    def results(self) -> dict:
        out = {"G": ((2, 2), "f8", "nav"), "cov": ((4, 4), "f8", "nav"), "origin": ((2,), "f8", "nav"),
               "valid": ((), "|b1", "nav"), "n_disks": ((), "i8", "nav"), "rms": ((), "f8", "nav")}
        if self.state["method"] == "com":
            out["com"] = ((2,), "f4", "nav")
        return {**out, **statistics_results(self.pattern_shape)}

    def __call__(self, patterns: np.ndarray) -> dict[str, np.ndarray]:
        st = self.state
        d = find_disks(patterns, st["radius"], st["center"], refine=st["method"], **st["find"])
        fit = fit_lattices(d["positions"], d["intensity"], d["central"], st["basis"], st["tolerance"])
        limit = 0.25 * st["radius"] if st["max_rms"] is None else st["max_rms"]
        fit["valid"] = fit["valid"] & (fit["rms"] <= limit)
        if st["method"] == "com":
            fit["com"] = center_of_mass(patterns)
        return {**fit, **batch_statistics(patterns, fit["origin"], st["radius"])}


def save_state(state: dict, path, pattern_shape: tuple[int, int]):
    """Save a classical state as a bundle folder (kind ``"classical"``), so
    the classical methods run per batch anywhere a bundle goes."""
    import torch

    from stemae.nn.bundle import save_bundle

    config = {k: state[k] for k in ("method", "radius", "max_rms", "tolerance", "find", "indexing")}
    config["pattern_shape"] = [int(v) for v in pattern_shape]
    return save_bundle(path, KIND, config, {"basis": torch.as_tensor(state["basis"]),
                                            "center": torch.as_tensor(state["center"])})


def load_state(path) -> tuple[dict, tuple[int, int]]:
    """A classical state and its pattern shape from a bundle (:func:`save_state`)."""
    from stemae.nn.bundle import load_bundle

    config, tensors = load_bundle(path, KIND)
    state = {**{k: v for k, v in config.items() if k != "pattern_shape"},
             "basis": tensors["basis"].double().numpy(), "center": tensors["center"].double().numpy()}
    return state, tuple(config["pattern_shape"])


def map_strain(
    data,
    *,
    method: str = "xcorr",
    reference=None,
    radius: float | None = None,
    max_rms: float | None = None,
    frame: np.ndarray | None = None,
    progress: bool = False,
    state: dict | None = None,
    store=None,
    fingerprint: dict | None = None,
    client=None,
    rows: int | None = None,
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
    radius, max_rms, **find_kwargs : see :func:`fit_state`
    frame : ndarray (2, 2), optional
        Axes of the strain maps (:func:`~stemae.geometry.frame_matrix`);
        detector axes by default.
    progress : bool
    state : a state from :func:`fit_state` (or :func:`load_state`); fitted
        on ``data`` by default
    store, fingerprint, client, rows : where and how the per-batch step runs
        (:func:`stemae.runner.run`)

    Returns
    -------
    dict with float32 maps ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless),
    ``theta`` (degrees) and their standard deviations ``sigma_e_xx``, ...
    ``sigma_theta`` (from each lattice fit's residuals and the reference's
    own scatter), ``valid`` (bool), ``g1``, ``g2`` (Ry, Rx, 2) and
    ``origin`` (Ry, Rx, 2) in detector pixels ``(x, y)``, ``n_disks``,
    ``rms`` (pixels), ``com`` (for ``method="com"``), the diagnostics
    (``virtual_bf``, ``virtual_df``, ``mean_pattern``, ``max_pattern``),
    the metadata ``g_ref`` (2, 2), ``radius`` (px), ``method`` and
    ``indexing`` (the :func:`~stemae.strain.pooled.lattice_check` of the
    reference sum), and ``state``.
    """
    mask = reference_mask(data.shape[:2], reference)
    if state is None:
        state = fit_state(data, method=method, reference=mask, radius=radius, max_rms=max_rms, **find_kwargs)
    fit = finish_statistics(run(ClassicalStep(state, data.shape[2:]), data, store=store, fingerprint=fingerprint,
                                client=client, rows=rows, progress=progress, desc=f"strain ({state['method']})"))
    valid = fit["valid"].astype(bool)
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
        radius=state["radius"],
        method=state["method"],
        indexing=state["indexing"],
        state=state,
        **{k: fit[k] for k in DIAGNOSTICS},
    )
    if "com" in fit:
        out["com"] = fit["com"].astype(np.float32)
    return out
