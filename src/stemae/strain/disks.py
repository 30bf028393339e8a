"""Bragg-disk detection: template cross-correlation, peak finding, sub-pixel
refinement, all batched over patterns.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

from stemae.shapes import disk_edge

FFT_WORKERS = -1


def disk_template(radius: float, shape: tuple[int, int], center=None, edge: float = 0.5) -> np.ndarray:
    """A soft-edged disk of unit sum.

    Parameters
    ----------
    radius : float
        Disk radius in pixels.
    shape : (H, W)
    center : (x, y), optional
        Disk centre in pixels; default ``(W // 2, H // 2)``.
    edge : float
        Edge blur (standard deviation) in pixels.

    Returns
    -------
    ndarray, shape (H, W), float64
    """
    H, W = shape
    cx, cy = (W // 2, H // 2) if center is None else center
    yy, xx = np.mgrid[0:H, 0:W]
    t = disk_edge(np.hypot(xx - cx, yy - cy), radius, edge)
    return t / t.sum()


def estimate_probe(patterns: np.ndarray) -> tuple[np.ndarray, float]:
    """Central-beam position and disk radius from a sample of patterns.

    The brightest connected region above half the maximum of each (lightly
    smoothed) pattern is taken as the central disk; its area gives the
    radius and its intensity centroid the centre.

    Parameters
    ----------
    patterns : ndarray, shape (B, Qy, Qx)

    Returns
    -------
    center : ndarray (x, y) in pixels, the median over the sample
    radius : float, pixels, the median over the sample
    """
    centers, radii = [], []
    for p in patterns:
        s = ndimage.gaussian_filter(p.astype(np.float64), 1.0)
        iy, ix = np.unravel_index(np.argmax(s), s.shape)
        lab, _ = ndimage.label(s > 0.5 * s[iy, ix])
        region = lab == lab[iy, ix]
        w = np.where(region, p, 0.0)
        yy, xx = np.nonzero(region)
        tot = w[yy, xx].sum()
        if tot <= 0:
            continue
        centers.append([(w[yy, xx] * xx).sum() / tot, (w[yy, xx] * yy).sum() / tot])
        radii.append(np.sqrt(region.sum() / np.pi))
    if not radii:
        raise ValueError("no central beam found: the patterns hold no positive counts")
    return np.median(np.array(centers), axis=0), float(np.median(radii))


def _local_maxima(corr: np.ndarray, spacing: int, margin: int) -> np.ndarray:
    """Boolean mask (B, Qy, Qx) of strict-enough local maxima away from the edges."""
    k = 2 * spacing + 1
    peaks = (corr == ndimage.maximum_filter(corr, size=(1, k, k), mode="constant", cval=-np.inf)) & (corr > 0)
    if margin > 0:
        peaks[:, :margin] = peaks[:, -margin:] = False
        peaks[:, :, :margin] = peaks[:, :, -margin:] = False
    return peaks


def _patches(patterns: np.ndarray, b: np.ndarray, yx: np.ndarray, size: int) -> np.ndarray:
    """Patches (Np, size, size) whose centre pixel ``size // 2`` is at ``yx``."""
    h = size // 2
    padded = np.pad(patterns, ((0, 0), (h, h), (h, h)))
    off = np.arange(size)
    rows = yx[:, 0, None] + off  # padded index = original - h + off + h
    cols = yx[:, 1, None] + off
    return padded[b[:, None, None], rows[:, :, None], cols[:, None, :]]


def _local_correlation(R: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Correlation at sub-pixel offsets from its spectrum: ``Re(E R E^T)``.

    R : (Np, S, S) complex spectra; E : (m, S) DFT rows for the offsets.
    Returns (Np, m, m), rows along y.

    Each patch is its own small matrix product, so a patch's result does
    not depend on which other patches share the batch (one tall product
    lets BLAS block the rows differently and changes the last bits).
    """
    return (E @ (R @ E.T)).real  # sum over kx, then ky


def _grid_peak(C: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``(dy, dx)`` of the maximum of ``C`` (Np, m, m) sampled at
    offsets ``d`` (m,), refined by a parabola through its neighbours."""
    m = len(d)
    iy, ix = np.unravel_index(C.reshape(len(C), -1).argmax(axis=1), (m, m))
    iy = np.clip(iy, 1, m - 2)
    ix = np.clip(ix, 1, m - 2)
    n = np.arange(len(C))
    step = d[1] - d[0]

    def vertex(cm, c0, cp):
        den = cm - 2 * c0 + cp
        return np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1), 0.0).clip(-0.5, 0.5)

    dy = d[iy] + step * vertex(C[n, iy - 1, ix], C[n, iy, ix], C[n, iy + 1, ix])
    dx = d[ix] + step * vertex(C[n, iy, ix - 1], C[n, iy, ix], C[n, iy, ix + 1])
    return dy, dx


def refine_xcorr(
    patterns: np.ndarray, b: np.ndarray, yx: np.ndarray, radius: float, edge: float = 0.5
) -> np.ndarray:
    """Sub-pixel disk centres by upsampled local cross-correlation.

    For each integer peak the correlation of a small patch with the disk
    template is evaluated by a matrix-multiply DFT (exact band-limited
    interpolation) on a 1/4 pixel grid within 1.25 pixels of the peak, then
    on a 1/64 pixel grid within 1/8 pixel of the best point, each time
    refined by a parabola through the grid maximum and its neighbours.

    Parameters
    ----------
    patterns : ndarray, shape (B, Qy, Qx)
    b : ndarray of int, shape (Np,)
        Pattern index of each peak.
    yx : ndarray of int, shape (Np, 2)
        Integer peak position (row, col).
    radius, edge : float
        Template disk radius and edge blur in pixels.

    Returns
    -------
    ndarray, shape (Np, 2): refined ``(x, y)`` in pixels.
    """
    size = int(2 * np.ceil(radius + 4 * edge + 2))
    P = _patches(patterns, b, yx, size)
    T = disk_template(radius, (size, size), edge=edge)
    R = (fft.fft2(P, workers=FFT_WORKERS) * np.conj(fft.fft2(T))[None]).astype(np.complex64)
    k = np.fft.fftfreq(size, 1.0 / size)
    d1 = np.arange(-5, 6) / 4.0
    dy, dx = _grid_peak(_local_correlation(R, np.exp(2j * np.pi * np.outer(d1, k) / size).astype(np.complex64)), d1)
    # Re-centre each spectrum on the coarse estimate, then a fine grid.
    ramp_y = np.exp(2j * np.pi * np.outer(dy, k) / size).astype(np.complex64)
    ramp_x = np.exp(2j * np.pi * np.outer(dx, k) / size).astype(np.complex64)
    R *= ramp_y[:, :, None] * ramp_x[:, None, :]
    d2 = np.arange(-8, 9) / 64.0
    fy, fx = _grid_peak(_local_correlation(R, np.exp(2j * np.pi * np.outer(d2, k) / size).astype(np.complex64)), d2)
    return np.stack([yx[:, 1] + dx + fx, yx[:, 0] + dy + fy], -1)


def refine_com(patterns: np.ndarray, b: np.ndarray, yx: np.ndarray, radius: float) -> np.ndarray:
    """Sub-pixel disk centres as intensity centroids within ``radius + 1.5`` px
    of each integer peak. Shapes as :func:`refine_xcorr`; returns ``(x, y)``."""
    size = int(2 * np.ceil(radius + 2))
    P = _patches(patterns, b, yx, size).astype(np.float64)
    off = np.arange(size) - size // 2
    oy, ox = np.meshgrid(off, off, indexing="ij")
    mask = np.hypot(ox, oy) <= radius + 1.5
    w = P * mask
    tot = w.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, 1.0)
    return np.stack(
        [yx[:, 1] + (w * ox).sum(axis=(1, 2)) / tot, yx[:, 0] + (w * oy).sum(axis=(1, 2)) / tot], -1
    )


def find_disks(
    patterns: np.ndarray,
    radius: float,
    center_guess,
    *,
    max_peaks: int = 48,
    min_spacing: float | None = None,
    min_relative_intensity: float = 0.01,
    edge_margin: float | None = None,
    refine: str = "xcorr",
    edge: float = 0.5,
) -> dict[str, np.ndarray]:
    """Detect Bragg disks in a batch of patterns.

    Parameters
    ----------
    patterns : ndarray, shape (B, Qy, Qx)
        Detector counts (any size, not only powers of two).
    radius : float
        Disk radius in pixels (the probe-aperture image).
    center_guess : (x, y)
        Approximate central-beam position; the strongest correlation peak
        within ``3 * radius`` of it is taken as the central beam.
    max_peaks : int
        Most disks kept per pattern, strongest first (central beam included).
    min_spacing : float, optional
        Smallest distance between two peaks in pixels; default ``radius``.
    min_relative_intensity : float
        Peaks weaker than this fraction of the strongest non-central peak are
        dropped (the central beam may outshine the disks by hundreds).
    edge_margin : float, optional
        Peaks closer than this to the detector edge are dropped; default
        ``radius``.
    refine : {"xcorr", "com"}
        Sub-pixel refinement: upsampled cross-correlation or intensity
        centroid.
    edge : float
        Edge blur of the template disk in pixels.

    Returns
    -------
    dict with
        ``positions`` (B, max_peaks, 2): ``(x, y)`` in pixels, NaN where empty;
        ``intensity`` (B, max_peaks): correlation peak heights (counts);
        ``central`` (B,): index of the central beam in ``positions``.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    B, Qy, Qx = patterns.shape
    spacing = int(round(radius if min_spacing is None else min_spacing))
    margin = int(round(radius if edge_margin is None else edge_margin))
    T = np.fft.ifftshift(disk_template(radius, (Qy, Qx), edge=edge))  # centre at pixel (0, 0)
    Tf = np.conj(fft.rfft2(T)).astype(np.complex64)
    corr = fft.irfft2(fft.rfft2(patterns, workers=FFT_WORKERS) * Tf, s=(Qy, Qx), workers=FFT_WORKERS)
    pb, py_all, px_all = np.nonzero(_local_maxima(corr, max(spacing, 1), margin))
    v_all = corr[pb, py_all, px_all]
    order = np.lexsort((-v_all, pb))  # by pattern, strongest first
    pb, py_all, px_all, v_all = pb[order], py_all[order], px_all[order], v_all[order]
    rank = np.arange(len(pb)) - np.searchsorted(pb, pb)  # rank within its pattern
    sel = rank < max_peaks
    k = max_peaks
    val = np.full((B, k), -np.inf)
    py = np.zeros((B, k), dtype=np.int64)
    px = np.zeros((B, k), dtype=np.int64)
    val[pb[sel], rank[sel]] = v_all[sel]
    py[pb[sel], rank[sel]] = py_all[sel]
    px[pb[sel], rank[sel]] = px_all[sel]

    # Central beam: strongest peak near the expected centre.
    cx, cy = center_guess
    near = np.hypot(px - cx, py - cy) <= 3 * radius
    cand = np.where(near & np.isfinite(val), val, -np.inf)
    central = np.where(np.isfinite(cand).any(1), cand.argmax(1), 0)
    others = np.where(np.arange(k)[None] == central[:, None], -np.inf, val)
    ref = np.max(others, axis=1, keepdims=True)
    keep = np.isfinite(val) & ((val >= min_relative_intensity * ref) | (np.arange(k)[None] == central[:, None]))

    bi, ni = np.nonzero(keep)
    yx = np.stack([py[bi, ni], px[bi, ni]], -1)
    if refine not in ("xcorr", "com"):
        raise ValueError(f"refine must be 'xcorr' or 'com', got {refine!r}")
    if not len(bi):  # blank patterns: no peak anywhere
        xy = np.zeros((0, 2))
    elif refine == "xcorr":
        xy = refine_xcorr(patterns, bi, yx, radius, edge=edge)
    else:
        xy = refine_com(patterns, bi, yx, radius)
    positions = np.full((B, k, 2), np.nan)
    positions[bi, ni] = xy
    intensity = np.where(keep, val, 0.0)
    return {"positions": positions, "intensity": intensity, "central": central}


def center_of_mass(patterns: np.ndarray) -> np.ndarray:
    """Whole-pattern centre of mass ``(B, 2)`` as ``(x, y)`` in pixels.

    The classical beam-shift (DPC-like) measurement; biased by any
    asymmetry of the disk intensities.
    """
    patterns = np.asarray(patterns, dtype=np.float64)
    _, Qy, Qx = patterns.shape
    tot = patterns.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, 1.0)
    x = (patterns.sum(axis=1) @ np.arange(Qx)) / tot
    y = (patterns.sum(axis=2) @ np.arange(Qy)) / tot
    return np.stack([x, y], -1)
