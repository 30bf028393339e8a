"""What a microscopist looks at besides the strain maps: virtual bright- and
dark-field images, the mean and maximum pattern, and the Bragg vector map
of the fitted lattices."""

from __future__ import annotations

import numpy as np

#: The virtual dark field collects the pixels beyond this many disk radii
#: from each pattern's central beam.
DARK_FIELD_INNER = 1.5
#: The diagnostics every strain run's results hold.
DIAGNOSTICS = ("virtual_bf", "virtual_df", "mean_pattern", "max_pattern")


def batch_statistics(patterns: np.ndarray, origin: np.ndarray, radius: float) -> dict[str, np.ndarray]:
    """Per-batch part of the diagnostics (results of every strain step).

    Parameters
    ----------
    patterns : (B, Qy, Qx) counts
    origin : (B, 2) central-beam position ``(x, y)`` of every pattern,
        detector px (NaN where unknown: the batch's median, or the detector
        centre, is used)
    radius : central disk radius, px

    Returns
    -------
    dict: ``virtual_bf`` (B,) counts within ``radius`` of each pattern's own
    central beam (descan followed); ``virtual_df`` (B,) counts beyond
    :data:`DARK_FIELD_INNER` radii of it; ``pattern_sum`` and
    ``pattern_max`` (Qy, Qx) over the batch (merged over the scan by sum
    and maximum)
    """
    B, Qy, Qx = patterns.shape
    origin = np.asarray(origin, np.float64)
    fallback = np.nanmedian(origin, 0) if np.isfinite(origin).any() else np.array([Qx, Qy]) / 2
    o = np.where(np.isfinite(origin), origin, fallback).astype(np.float32)
    # Only the pixels near each central beam: the dark field is the total
    # less the counts within DARK_FIELD_INNER radii.
    h = int(np.ceil(DARK_FIELD_INNER * radius)) + 1
    off = np.arange(-h, h + 1)
    base = np.round(o).astype(np.int64)
    px = base[:, 0, None, None] + off[None, None, :]  # (B, 1, n)
    py = base[:, 1, None, None] + off[None, :, None]  # (B, n, 1)
    inside = (px >= 0) & (px < Qx) & (py >= 0) & (py < Qy)
    near = patterns[np.arange(B)[:, None, None], py.clip(0, Qy - 1), px.clip(0, Qx - 1)] * inside
    r2 = (px - o[:, 0, None, None]) ** 2 + (py - o[:, 1, None, None]) ** 2
    total = patterns.sum((1, 2), dtype=np.float64)
    return {"virtual_bf": (near * (r2 <= radius**2)).sum((1, 2)).astype(np.float32),
            "virtual_df": (total - (near * (r2 < (DARK_FIELD_INNER * radius) ** 2)).sum((1, 2))).astype(np.float32),
            "pattern_sum": patterns.sum(0, dtype=np.float64), "pattern_max": patterns.max(0)}


def statistics_results(pattern_shape: tuple[int, int]) -> dict:
    """What :func:`batch_statistics` gives, as a step declares it (see :mod:`stemae.runner`)."""
    return {"virtual_bf": ((), "f4", "nav"), "virtual_df": ((), "f4", "nav"),
            "pattern_sum": (tuple(pattern_shape), "f8", "sum"), "pattern_max": (tuple(pattern_shape), "f4", "max")}


def finish_statistics(res: dict) -> dict:
    """``res`` (a run's results) with its merged ``pattern_sum`` and
    ``pattern_max`` turned into the mean and maximum pattern
    (``mean_pattern``, ``max_pattern`` float32 (Qy, Qx))."""
    out = {k: v for k, v in res.items() if k not in ("pattern_sum", "pattern_max")}
    out["mean_pattern"] = (res["pattern_sum"] / res["virtual_bf"].size).astype(np.float32)
    out["max_pattern"] = res["pattern_max"].astype(np.float32)
    return out


def bragg_vector_map(G: np.ndarray, valid: np.ndarray, pattern_shape: tuple[int, int], order: int = 2
                     ) -> np.ndarray:
    """Histogram of the fitted lattices' reflections, every pattern's
    ``h g1 + k g2`` (``|h|, |k| <= order``) placed about the detector centre
    (so descan does not blur it), one count per reflection and pattern.

    Parameters
    ----------
    G : (Ry, Rx, 2, 2) fitted bases, columns g1, g2 ``(x, y)`` in px
    valid : (Ry, Rx) bool
    pattern_shape : (Qy, Qx)

    Returns
    -------
    (Qy, Qx) counts: a single lattice gives sharp spots, strain spreads
    them, several lattices give several spot sets
    """
    Qy, Qx = pattern_shape
    h, k = np.meshgrid(np.arange(-order, order + 1), np.arange(-order, order + 1))
    hk = np.stack([h.ravel(), k.ravel()], 1).astype(np.float64)
    g = np.asarray(G, np.float64)[valid & np.isfinite(G).all(axis=(-1, -2))]
    pts = np.einsum("nij,mj->nmi", g, hk).reshape(-1, 2) + np.array([Qx // 2, Qy // 2])
    out, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=(Qy, Qx), range=((-0.5, Qy - 0.5), (-0.5, Qx - 0.5)))
    return out.astype(np.float32)
