"""What a microscopist looks at besides the strain maps: virtual bright- and
dark-field images, the mean and maximum pattern, and the Bragg vector map
of the fitted lattices."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from stemae.data.blocks import iter_row_blocks, rows_for_budget

#: The virtual dark field collects the pixels beyond this many disk radii
#: from each pattern's central beam.
DARK_FIELD_INNER = 1.5


def pattern_statistics(data, origin: np.ndarray, radius: float, progress: bool = False) -> dict[str, np.ndarray]:
    """One pass over a datacube.

    Parameters
    ----------
    data : (Ry, Rx, Qy, Qx) array-like (streamed in blocks of scan rows)
    origin : (Ry, Rx, 2) central-beam position ``(x, y)`` of every pattern,
        detector px (NaN where unknown: the scan's median is used)
    radius : central disk radius, px

    Returns
    -------
    dict: ``virtual_bf`` (Ry, Rx) counts within ``radius`` of each
    pattern's own central beam (descan followed); ``virtual_df`` (Ry, Rx)
    counts beyond :data:`DARK_FIELD_INNER` radii of it; ``mean_pattern`` and
    ``max_pattern`` (Qy, Qx)
    """
    Ry, Rx, Qy, Qx = data.shape
    origin = np.asarray(origin, np.float64)
    fallback = np.nanmedian(origin.reshape(-1, 2), 0) if np.isfinite(origin).any() else np.array([Qx, Qy]) / 2
    origin = np.where(np.isfinite(origin), origin, fallback)
    yy, xx = np.mgrid[0:Qy, 0:Qx].astype(np.float32)
    bf, df = np.zeros((Ry, Rx)), np.zeros((Ry, Rx))
    total, peak = np.zeros((Qy, Qx)), np.full((Qy, Qx), -np.inf)
    rows = rows_for_budget(data.shape, 32 * 2**20)
    for r0, block in tqdm(iter_row_blocks(data, rows), total=-(-Ry // rows), desc="virtual images",
                          disable=not progress, leave=False):
        o = origin[r0:r0 + len(block)].astype(np.float32)
        r2 = (xx - o[..., 0, None, None]) ** 2 + (yy - o[..., 1, None, None]) ** 2
        bf[r0:r0 + len(block)] = (block * (r2 <= radius**2)).sum((2, 3))
        df[r0:r0 + len(block)] = (block * (r2 >= (DARK_FIELD_INNER * radius) ** 2)).sum((2, 3))
        total += block.sum((0, 1))
        peak = np.maximum(peak, block.max((0, 1)))
    return {"virtual_bf": bf.astype(np.float32), "virtual_df": df.astype(np.float32),
            "mean_pattern": (total / (Ry * Rx)).astype(np.float32), "max_pattern": peak.astype(np.float32)}


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
