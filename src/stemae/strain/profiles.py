"""Disk and background shapes measured from the data.

The Bragg disks of a thin crystal are images of the probe-forming aperture,
as is the central disk, which holds most of the electrons: its mean radial
profile over many patterns (each centred on its own sub-pixel origin) is an
accurate, low-noise template for every disk, edge blur and pixel response
included. A pseudo-Voigt edge (a Gaussian/Lorentzian mix) fitted to that
profile is the smooth, analytic alternative. The diffuse background
(thermal diffuse and inelastic scattering) is a radial function around the
central beam; its shape is measured from the pixels outside all disks.

Profiles are tables sampled every ``dr`` pixels from ``r = 0`` (see
:func:`stemae.nn.sampling.table_lookup`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize, special

DISK_DR = 0.05  # table step of disk profiles, pixels
BACKGROUND_DR = 1.0  # table step of background profiles, pixels


def radial_sums(patterns: np.ndarray, centers: np.ndarray, dr: float, r_max: float,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed intensity and pixel count in radial bins around each pattern's centre.

    Parameters
    ----------
    patterns : (B, Qy, Qx)
    centers : (B, 2) ``(x, y)`` pixels
    dr, r_max : bin width and outer edge, pixels
    mask : (B, Qy, Qx) bool, optional; only True pixels count

    Returns
    -------
    sums, counts : (n,) over all patterns, bin ``k`` covering ``[k dr, (k + 1) dr)``
    """
    B, Qy, Qx = patterns.shape
    n = int(np.ceil(r_max / dr))
    yy, xx = np.mgrid[0:Qy, 0:Qx]
    sums, counts = np.zeros(n), np.zeros(n)
    for i in range(B):
        r = np.hypot(xx - centers[i, 0], yy - centers[i, 1])
        k = (r / dr).astype(np.int64)
        sel = k < n if mask is None else (k < n) & mask[i]
        sums += np.bincount(k[sel], weights=patterns[i][sel].astype(np.float64), minlength=n)
        counts += np.bincount(k[sel], minlength=n)
    return sums, counts


def disk_profile(patterns: np.ndarray, origins: np.ndarray, radius: float, *, dr: float = DISK_DR,
                 extent: float = 6.0) -> tuple[np.ndarray, float]:
    """Mean radial profile of the central disk as a normalised table.

    Pixels within ``radius + extent`` of each pattern's origin are binned by
    their distance (0.1 px bins: the sub-pixel origins of many patterns
    sample the edge densely); a straight baseline fitted over the outer
    three pixels is removed and the plateau (inside half the radius) scaled
    to one.

    Parameters
    ----------
    patterns : (B, Qy, Qx) counts
    origins : (B, 2) central-beam positions ``(x, y)``, pixels, to a small
        fraction of a pixel
    radius : approximate disk radius, pixels
    dr : table step, pixels
    extent : how far beyond ``radius`` the table reaches, pixels

    Returns
    -------
    table : (n,) profile at ``r = 0, dr, ...`` (1 inside, 0 beyond the edge)
    radius : where the profile falls to one half, pixels
    """
    r_max = radius + extent
    sums, counts = radial_sums(patterns, origins, 0.1, r_max)
    r_bin = (np.arange(len(sums)) + 0.5) * 0.1
    ok = counts > 0
    prof = np.interp(r_bin, r_bin[ok], sums[ok] / counts[ok])
    outer = r_bin >= r_max - 3.0
    slope, icpt = np.polyfit(r_bin[outer], prof[outer], 1)
    prof = prof - (slope * r_bin + icpt)
    prof = ndimage.gaussian_filter1d(prof, 1.0)  # 0.1 px: only the counting noise
    plateau = prof[r_bin < 0.5 * radius].mean()
    if not plateau > 0:
        raise ValueError("no central disk in the patterns: the profile has no plateau")
    prof /= plateau
    r = np.arange(0.0, r_max + dr, dr)
    table = np.interp(r, r_bin, prof, left=prof[0], right=0.0)
    table[r >= r_max - 1.5] *= np.clip((r_max - r[r >= r_max - 1.5]) / 1.5, 0, 1)  # taper to zero
    return table.astype(np.float32), _half_radius(table, dr)


def _half_radius(table: np.ndarray, dr: float) -> float:
    """Where a falling profile first drops below one half."""
    i = int(np.argmax(table < 0.5))
    return float(dr * (i - 1 + (table[i - 1] - 0.5) / (table[i - 1] - table[i])))


def pseudo_voigt_edge(r: np.ndarray, radius: float, sigma: float, gamma: float, eta: float) -> np.ndarray:
    """A disk edge whose slope is a pseudo-Voigt: ``1 - [eta L + (1 - eta) N]``,
    with ``N`` the normal and ``L`` the Cauchy cumulative distribution of
    ``r - radius`` (widths ``sigma`` and ``gamma``, pixels)."""
    x = r - radius
    lorentz = 0.5 + np.arctan(x / gamma) / np.pi
    gauss = 0.5 * special.erfc(-x / (np.sqrt(2.0) * sigma))
    return 1.0 - (eta * lorentz + (1.0 - eta) * gauss)


def fit_pseudo_voigt(table: np.ndarray, dr: float = DISK_DR, radius: float | None = None) -> tuple[np.ndarray, dict]:
    """Fit a pseudo-Voigt edge (times a plateau height) to a measured disk profile.

    Parameters
    ----------
    table : (n,) measured profile at ``r = 0, dr, ...`` (plateau about 1)
    dr : table step, pixels
    radius : starting radius, pixels; default where the table falls to one half

    Returns
    -------
    table : (n,) the fitted edge (plateau 1) on the same grid, tapered to
        zero at its end
    params : dict of ``radius``, ``sigma``, ``gamma`` (pixels), ``eta`` and
        ``height`` (the measured plateau relative to 1)
    """
    r = np.arange(len(table)) * dr
    R0 = _half_radius(table, dr) if radius is None else float(radius)
    ok = np.isfinite(table)

    def resid(p):
        return p[4] * pseudo_voigt_edge(r[ok], *p[:4]) - table[ok]

    sol = optimize.least_squares(resid, [R0, 0.5, 0.5, 0.2, 1.0],
                                 bounds=([0.7 * R0, 0.05, 0.05, 0.0, 0.5], [1.3 * R0, 5.0, 5.0, 1.0, 2.0]))
    R, sigma, gamma, eta, height = (float(v) for v in sol.x)
    fitted = pseudo_voigt_edge(r, R, sigma, gamma, eta)
    fitted = fitted - fitted[-1] * r / r[-1]  # Lorentz tails: reach zero at the table's end
    return fitted.astype(np.float32), dict(radius=R, sigma=sigma, gamma=gamma, eta=eta, height=height)


def background_profile(patterns: np.ndarray, origins: np.ndarray, disk_centers: np.ndarray, radius: float,
                       *, dr: float = BACKGROUND_DR) -> np.ndarray:
    """Radial shape of the diffuse background around the central beam.

    Pixels further than ``radius + 3`` from every disk (the central beam
    included) are averaged in radial bins around each pattern's origin, each
    pattern scaled by its total counts; bins that hold no such pixel (under
    the central disk) take the value of the nearest bin that does.

    Parameters
    ----------
    patterns : (B, Qy, Qx) counts
    origins : (B, 2) ``(x, y)`` pixels
    disk_centers : (B, J, 2) Bragg-disk centres ``(x, y)``, NaN for none
    radius : disk radius, pixels
    dr : table step, pixels

    Returns
    -------
    (n,) background per pixel and per electron at ``r = 0, dr, ...`` out to
    the detector's far corner.
    """
    B, Qy, Qx = patterns.shape
    yy, xx = np.mgrid[0:Qy, 0:Qx]
    keep = np.ones(patterns.shape, bool)
    near = (radius + 3.0) ** 2
    centres = np.concatenate([origins[:, None], disk_centers], 1)
    for i in range(B):
        for c in centres[i][np.isfinite(centres[i]).all(-1)]:
            x0, x1 = int(max(c[0] - radius - 4, 0)), int(min(c[0] + radius + 5, Qx))
            y0, y1 = int(max(c[1] - radius - 4, 0)), int(min(c[1] + radius + 5, Qy))
            if x0 < x1 and y0 < y1:
                sub = (xx[y0:y1, x0:x1] - c[0]) ** 2 + (yy[y0:y1, x0:x1] - c[1]) ** 2 <= near
                keep[i, y0:y1, x0:x1] &= ~sub
    scaled = patterns / np.maximum(patterns.sum(axis=(1, 2), keepdims=True), 1e-12)
    r_max = float(np.hypot(Qy, Qx)) + dr
    sums, counts = radial_sums(scaled, origins, dr, r_max, keep)
    ok = counts > 0
    if not ok.any():
        return np.zeros(int(np.ceil(r_max / dr)), np.float32)
    k = np.arange(len(sums))
    prof = np.interp(k, k[ok], sums[ok] / counts[ok])
    return ndimage.gaussian_filter1d(prof, 1.0).astype(np.float32)


def ring_median_background(pattern: np.ndarray, origin, inner: float, width: float = 1.0) -> np.ndarray:
    """Background of one pattern as the median of each ring around the central
    beam (rings ``width`` pixels wide) beyond ``inner`` pixels (zero within),
    as an image (Qy, Qx). Bragg disks cover well under half of any ring, so
    the median ignores them; removing this before peak finding keeps weak
    disks on a steep background from being lost on its slope. Set ``inner``
    beyond the central disk, which fills its rings."""
    Qy, Qx = pattern.shape
    yy, xx = np.mgrid[0:Qy, 0:Qx]
    k = (np.hypot(xx - origin[0], yy - origin[1]) / width).astype(np.int64)
    order = np.argsort(k, axis=None)
    ks, vals = k.ravel()[order], pattern.ravel()[order]
    starts = np.flatnonzero(np.r_[True, np.diff(ks) > 0])
    med = np.zeros(ks.max() + 1)
    for a, b in zip(starts, np.r_[starts[1:], len(ks)]):
        med[ks[a]] = np.median(vals[a:b])
    med[: int(inner / width) + 1] = 0.0
    return med[k]


def shell_profiles(patterns: np.ndarray, origins: np.ndarray, centers: np.ndarray, amplitudes: np.ndarray,
                   background: np.ndarray, scales: np.ndarray, shells: np.ndarray, radius: float, *,
                   dr: float = DISK_DR, extent: float = 6.0) -> np.ndarray:
    """Mean radial profile of the Bragg disks of each shell, from fitted patterns.

    Around every fitted disk, the pixels minus the fitted diffuse background
    are binned by their distance from the disk's centre (0.1 px bins) and
    divided by the disks' fitted plateaus, pooled over all disks of a shell
    and all patterns; what is left outside the disks (the outer three
    pixels) is removed as a local level and the plateau scaled to one.

    Parameters
    ----------
    patterns : (B, Qy, Qx) counts
    origins : (B, 2) fitted central-beam positions
    centers : (B, J, 2) fitted disk centres, NaN where a disk was not fitted
    amplitudes : (B, J) fitted plateaus (counts)
    background, scales : the background's radial shape (every
        ``BACKGROUND_DR`` px) and each pattern's fitted scale of it (B,)
    shells : (J,) shell index of each reflection
    radius : approximate disk radius, pixels
    dr : table step; extent : reach beyond ``radius``, pixels

    Returns
    -------
    (S, n) one table per shell (S = shells.max() + 1), like
    :func:`disk_profile`'s; a shell without usable disks gets NaN.
    """
    import torch

    from stemae.nn.sampling import gather_windows, table_lookup, window_offsets

    r_max = radius + extent
    nb = int(np.ceil(r_max / 0.1))
    S = int(shells.max()) + 1
    num, den = np.zeros((S, nb)), np.zeros((S, nb))
    ok = np.isfinite(centers).all(-1) & (amplitudes > 0)
    offsets = window_offsets(r_max)
    M = torch.as_tensor(background, dtype=torch.float64)
    for i in range(0, len(patterns), 64):
        x = torch.as_tensor(patterns[i : i + 64], dtype=torch.float64)
        c = torch.as_tensor(np.nan_to_num(centers[i : i + 64]))
        vals, px, py, inside = gather_windows(x, c, offsets)
        r = torch.hypot(px - c[..., 0, None], py - c[..., 1, None])
        o = torch.as_tensor(origins[i : i + 64])
        rb = torch.hypot(px - o[:, 0, None, None], py - o[:, 1, None, None])
        bg = torch.as_tensor(scales[i : i + 64])[:, None, None] * table_lookup(M, BACKGROUND_DR, rb)[0]
        use = (inside > 0) & torch.as_tensor(ok[i : i + 64])[..., None] & (r < r_max)
        k = (r / 0.1).long().clamp(max=nb - 1) + torch.as_tensor(shells)[None, :, None] * nb
        a = torch.as_tensor(amplitudes[i : i + 64])[..., None].expand_as(r)
        num += np.bincount(k[use].numpy(), weights=(vals - bg)[use].numpy(), minlength=S * nb).reshape(S, nb)
        den += np.bincount(k[use].numpy(), weights=a[use].numpy(), minlength=S * nb).reshape(S, nb)
    r_bin = (np.arange(nb) + 0.5) * 0.1
    r = np.arange(0.0, r_max + dr, dr)
    out = np.full((S, len(r)), np.nan, np.float32)
    for s in range(S):
        good = den[s] > 0
        if good.sum() < nb // 2:
            continue
        prof = ndimage.gaussian_filter1d(np.interp(r_bin, r_bin[good], num[s][good] / den[s][good]), 1.0)
        table = np.interp(r, r_bin, prof, left=prof[0], right=0.0)
        table[r >= r_max - 1.5] *= np.clip((r_max - r[r >= r_max - 1.5]) / 1.5, 0, 1)
        out[s] = table
    return out
