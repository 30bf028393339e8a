"""Compare strain maps with a simulator's ground truth."""

from __future__ import annotations

import numpy as np

from stemae.geometry import strain_maps
from stemae.strain.lattice import align_to_reference

COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")


def truth_strain_maps(truth: dict, reference, basis: np.ndarray, like: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Ground-truth strain maps on the same footing as a measurement.

    The true reciprocal bases are re-labelled to the measured basis (so the
    same reflections are called ``g1`` and ``g2``) and referred to the same
    reference region with :func:`stemae.geometry.strain_maps`.

    Parameters
    ----------
    truth : dict with ``g1``, ``g2`` (Ry, Rx, 2) in detector pixels
    reference : reference region, as for :func:`stemae.geometry.reference_mask`
    basis : ndarray (2, 2), the measured reference basis
    like : ndarray (Ry, Rx, 2, 2), optional
        Measured bases: where finite, each true basis takes the labelling
        closest to the measured one. In polycrystals a grain's labelling
        relative to the reference is a convention (a 90-degree relabelling
        of a nearly square lattice trades a rotation for a small strain);
        this compares methods on the physics, not on that choice.

    Returns
    -------
    dict of ``e_xx``, ``e_yy``, ``e_xy`` and ``theta`` (degrees), (Ry, Rx).
    """
    G = align_to_reference(np.stack([truth["g1"], truth["g2"]], -1).astype(np.float64), basis)
    if like is not None:
        ok = np.isfinite(like).all(axis=(-1, -2))
        G[ok] = align_to_reference(G[ok], like[ok])
    maps, _ = strain_maps(G, reference)
    return maps


def strain_errors(maps: dict, truth_maps: dict, valid: np.ndarray | None = None) -> dict[str, float]:
    """Mean absolute error of each component over valid positions, plus the
    fraction of positions that are valid (``valid_fraction``)."""
    ok = np.ones(np.shape(maps["e_xx"]), bool) if valid is None else np.asarray(valid, bool)
    out = {}
    for k in COMPONENTS:
        d = np.abs(np.asarray(maps[k], np.float64) - truth_maps[k])[ok]
        out[k] = float(np.nanmean(d)) if d.size else float("nan")
    out["valid_fraction"] = float(ok.mean())
    return out
