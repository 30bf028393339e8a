"""The lattice from pooled data: patterns summed on a common central beam.

At low dose no single pattern shows the lattice (a monolayer's first-order
disk may hold ten electrons), but a sum of patterns aligned on their central
beams does. Bases, the reference lattice and indexing are found on such sums
(of a region, or of small tiles of neighbouring positions), and every
per-pattern fit starts from there. :func:`lattice_check` says when a basis
does not explain the sum (indexing doubtful) instead of letting a wrong
lattice pass silently.
"""

from __future__ import annotations

import warnings

import numpy as np

from stemae.data.blocks import read_patterns
from stemae.strain.disks import estimate_probe, find_disks
from stemae.strain.lattice import choose_basis, lattice_points
from stemae.strain.profiles import ring_median_background

TILE_COUNTS = 2e5  # electrons outside the central disk wanted in one tile sum
MAX_TILE = 8


def beam_centers(patterns: np.ndarray, radius: float, guess) -> np.ndarray:
    """Central-beam position of each pattern: the intensity centroid within
    1.5 radii of the beam, iterated from ``guess``.

    Parameters
    ----------
    patterns : (B, Qy, Qx)
    radius : central-disk radius, pixels
    guess : (x, y) starting position (e.g. from :func:`~stemae.strain.disks.estimate_probe`)

    Returns
    -------
    (B, 2) ``(x, y)`` pixels (to about a tenth of a pixel; the likelihood
    fits refine it)
    """
    B, Qy, Qx = patterns.shape
    c = np.tile(np.asarray(guess, dtype=np.float64), (B, 1))
    h = int(np.ceil(2 * radius)) + 1
    off = np.arange(-h, h + 1)
    for _ in range(3):
        base = np.round(c).astype(int)
        xs = np.clip(base[:, 0, None] + off, 0, Qx - 1)
        ys = np.clip(base[:, 1, None] + off, 0, Qy - 1)
        win = patterns[np.arange(B)[:, None, None], ys[:, :, None], xs[:, None, :]].astype(np.float64)
        dx = xs[:, None, :] - c[:, 0, None, None]
        dy = ys[:, :, None] - c[:, 1, None, None]
        w = win * (dx * dx + dy * dy <= (1.5 * radius) ** 2)
        tot = np.maximum(w.sum((1, 2)), 1e-12)
        c = np.stack([(w * xs[:, None, :]).sum((1, 2)) / tot, (w * ys[:, :, None]).sum((1, 2)) / tot], -1)
    return c


def aligned_sum(patterns: np.ndarray, centers: np.ndarray, target) -> np.ndarray:
    """Sum of patterns each shifted by whole pixels so that its central beam
    lands on ``target`` (x, y). Shapes (B, Qy, Qx), (B, 2); returns (Qy, Qx)."""
    B, Qy, Qx = patterns.shape
    out = np.zeros((Qy, Qx))
    shift = np.round(np.asarray(centers) - np.asarray(target)).astype(int)  # source = dest + shift
    for p, (sx, sy) in zip(patterns, shift):
        ys, yd = (slice(sy, Qy), slice(0, Qy - sy)) if sy >= 0 else (slice(0, Qy + sy), slice(-sy, Qy))
        xs, xd = (slice(sx, Qx), slice(0, Qx - sx)) if sx >= 0 else (slice(0, Qx + sx), slice(-sx, Qx))
        out[yd, xd] += p[ys, xs]
    return out


def tile_size(patterns: np.ndarray, center, radius: float) -> int:
    """Side of square tiles of scan positions whose sum holds about
    ``TILE_COUNTS`` electrons outside the central disk (1 for bright
    patterns, up to ``MAX_TILE``)."""
    yy, xx = np.mgrid[0 : patterns.shape[1], 0 : patterns.shape[2]]
    outside = np.hypot(xx - center[0], yy - center[1]) > radius + 2
    n = float(np.median(patterns[:, outside].sum(1)))
    return int(np.clip(np.ceil(np.sqrt(TILE_COUNTS / max(n, 1.0))), 1, MAX_TILE))


def tile_positions(scan_shape: tuple[int, int], tile: int, n_tiles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scan positions of ``n_tiles`` square tiles of ``tile`` x ``tile``
    neighbouring positions, drawn (seeded, without replacement) from the
    grid of tiles. Returns rows, cols, each (T, tile * tile)."""
    Ry, Rx = scan_shape
    tile = max(1, min(tile, Ry, Rx))
    rows, cols = np.arange(0, Ry - tile + 1, tile), np.arange(0, Rx - tile + 1, tile)
    corners = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    corners = corners[np.sort(rng.choice(len(corners), min(n_tiles, len(corners)), replace=False))]
    dr, dc = (v.ravel() for v in np.meshgrid(np.arange(tile), np.arange(tile), indexing="ij"))
    return corners[:, 0, None] + dr, corners[:, 1, None] + dc


def disk_basis(disks: dict, t: int, radius: float) -> np.ndarray:
    """The reduced basis (2, 2) of the disks found in pattern ``t`` (a sum,
    usually) around its central beam, weighted by their intensities
    (:func:`~stemae.strain.disks.find_disks` output; disk radius in px).
    Raises ``ValueError`` when the pattern shows no Bragg disk."""
    v = disks["positions"][t] - disks["positions"][t, disks["central"][t]]
    w = np.where(np.arange(len(v)) == disks["central"][t], 0.0, disks["intensity"][t])
    ok = np.isfinite(v).all(-1) & (w > 0)
    if not ok.any():
        raise ValueError("no Bragg disks found around the central beam: is there a crystal in the scan?")
    pts, strength = lattice_points(v[ok], w[ok], radius, float(np.abs(v[ok]).max()) + 2)
    return choose_basis(pts, strength, min_length=1.5 * radius)


def lattice_check(disks: dict, G: np.ndarray, radius: float) -> dict:
    """How well a basis explains the disks detected in pooled patterns.

    Parameters
    ----------
    disks : :func:`~stemae.strain.disks.find_disks` output for one or more
        summed patterns (``positions`` (T, N, 2), ``intensity`` (T, N),
        ``central`` (T,))
    G : (2, 2) or (T, 2, 2) basis, columns g1, g2, pixels
    radius : disk radius, pixels

    Returns
    -------
    dict with ``indexed`` (share of the detected disks' intensity that sits
    within 15 % of |g1| of a lattice site), ``sites`` (share of the lattice
    sites on the detector, out to the farthest detected disk, where a disk
    was found), both medians over the sums, and ``ok`` (both above 0.6).
    """
    pos, inten, central = disks["positions"], disks["intensity"], disks["central"]
    T = pos.shape[0]
    G = np.broadcast_to(np.asarray(G, np.float64), (T, 2, 2))
    tol = 0.15 * np.linalg.norm(G, axis=1).min(1)
    indexed, sites = [], []
    for t in range(T):
        v = pos[t] - pos[t, central[t]]
        ok = np.isfinite(v).all(-1) & (np.arange(len(v)) != central[t]) & (inten[t] > 0)
        if not ok.any():
            indexed.append(0.0)
            sites.append(0.0)
            continue
        v, w = v[ok], inten[t][ok]
        hk = np.round(np.linalg.solve(G[t], v.T).T)
        d = np.linalg.norm(v - hk @ G[t].T, axis=1)
        good = (d < tol[t]) & (hk != 0).any(1)
        indexed.append(float(w[good].sum() / w.sum()))
        # Lattice sites within the detected range that should show a disk.
        reach = np.linalg.norm(v, axis=1).max()
        n = int(np.ceil(reach / np.linalg.norm(G[t], axis=0).min())) + 1
        h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
        hk_all = np.stack([h.ravel(), k.ravel()], 1)
        g = hk_all @ G[t].T
        gl = np.linalg.norm(g, axis=1)
        inner = (gl > radius) & (gl <= 0.8 * reach)
        if inner.any():
            found = np.min(np.linalg.norm(g[inner][:, None] - v[None], axis=-1), axis=1) < tol[t]
            sites.append(float(found.mean()))
        else:
            sites.append(0.0)
    out = dict(indexed=float(np.median(indexed)), sites=float(np.median(sites)))
    out["ok"] = bool(out["indexed"] > 0.6 and out["sites"] > 0.6)
    return out


def pooled_basis(data, mask: np.ndarray, *, radius: float | None = None, max_patterns: int = 1024, seed: int = 0,
                 what: str = "reference region") -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """A primitive basis from the aligned sum of a region's patterns.

    Parameters
    ----------
    data : array-like (Ry, Rx, Qy, Qx)
    mask : (Ry, Rx) bool region
    radius : disk radius in pixels; estimated from the central beam by default
    max_patterns : at most this many patterns (drawn at random, seeded) are summed
    seed : int
    what : the region's name, for the warning

    Returns
    -------
    G : (2, 2) basis, columns g1, g2, pixels
    check : :func:`lattice_check` of the sum, with ``radius`` (px) added
    pattern : (Qy, Qx) the aligned sum (for figures)
    origin : (2,) its central beam, ``(x, y)``

    Warns when the basis does not explain the sum (``check['ok']`` False).
    """
    rr, cc = np.nonzero(mask)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rr), min(max_patterns, len(rr)), replace=False))
    patterns = read_patterns(data, rr[pick], cc[pick])
    center, est = estimate_probe(patterns[:: max(1, len(patterns) // 64)])
    radius = est if radius is None else float(radius)
    c = beam_centers(patterns, radius, center)
    target = np.round(np.median(c, 0))
    total = aligned_sum(patterns, c, target)
    d = find_disks((total - ring_median_background(total, target, radius + 3))[None], radius, target,
                   min_relative_intensity=0.02, max_peaks=64)
    G = disk_basis(d, 0, radius)
    check = lattice_check(d, G, radius)
    check["radius"] = radius
    if not check["ok"]:
        warnings.warn(
            f"indexing doubtful: the basis explains {check['indexed']:.0%} of the disk intensity in the "
            f"{what}'s summed pattern and finds disks at {check['sites']:.0%} of its lattice sites; "
            "the region may hold several lattices (grains, phases) or no visible lattice",
            stacklevel=2,
        )
    return G, check, total, d["positions"][0, d["central"][0]]
