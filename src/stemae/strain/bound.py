"""The Cramér-Rao bound: the smallest strain error any unbiased method can reach.

For a noise-free pattern (its expected counts) at a given dose and diffuse
background, the Fisher information of the pattern model of
:mod:`stemae.strain.ccstae.likelihood` (disks of the pattern's own measured shapes, the
central disk's and each shell's, moved rigidly by the lattice; every disk's
amplitude and the background's scale unknown; Poisson noise) bounds the
covariance of any unbiased estimate of the lattice, and so of the strain. A
method's mean absolute error divided by ``sqrt(2 / pi)`` times this standard
deviation says how far it is from the photon limit.
"""

from __future__ import annotations

import numpy as np
import torch

from stemae.geometry import strain_uncertainty
from stemae.strain.ccstae.likelihood import fit_disk_lattice
from stemae.simulate.diffraction import diffuse_background
from stemae.strain.disks import estimate_probe, find_disks
from stemae.strain.pooled import beam_centers, disk_basis
from stemae.strain.profiles import (
    BACKGROUND_DR,
    DISK_DR,
    background_profile,
    disk_profile,
    ring_median_background,
    shell_profiles,
)

MAE_PER_SIGMA = float(np.sqrt(2 / np.pi))  # mean absolute value of a unit normal variable


def _lattice(pattern: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Origin, reduced basis and disk radius of one bright pattern."""
    center, radius = estimate_probe(pattern[None])
    origin = beam_centers(pattern[None], radius, center)[0]
    clean = pattern - ring_median_background(pattern, origin, radius + 3)
    d = find_disks(clean[None], radius, origin, min_relative_intensity=0.01, max_peaks=64)
    return origin, disk_basis(d, 0, radius), radius


def strain_bound(
    patterns: np.ndarray,
    dose: float | None = None,
    background: float | np.ndarray = 0.0,
    *,
    origin: np.ndarray | None = None,
    basis: np.ndarray | None = None,
    background_width: float | None = None,
    reference_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Cramér-Rao bound of the strain components for noise-free patterns.

    Parameters
    ----------
    patterns : (Qy, Qx) or (B, Qy, Qx)
        Expected diffraction intensities (noise-free; any scale unless
        ``dose`` is None, then counts), e.g. a simulation or a pattern
        averaged over many positions.
    dose : float, optional
        Electrons per pattern: each pattern is scaled to this total
        (diffracted plus background); ``None`` takes the patterns as counts.
    background : float or (Qy, Qx) / (B, Qy, Qx) array
        A fraction of the electrons moved into a Lorentzian diffuse
        background around the central beam (as
        :func:`stemae.simulate.simulate_datacube` does), or the expected
        background counts themselves (added to the patterns).
    origin : (2,) or (B, 2), optional
        Central-beam positions ``(x, y)``; found by default.
    basis : (2, 2) or (B, 2, 2), optional
        Reciprocal bases (columns g1, g2, pixels); found on the first
        pattern by default (then the patterns must share one lattice, to
        within a few per cent).
    background_width : float, optional
        Half width of the Lorentzian background in pixels; default half the
        shortest reflection, as the built-in simulator.
    reference_size : int, optional
        Positions averaged for the reference lattice; their own error is
        added (as :func:`stemae.geometry.strain_maps` does for measured maps).

    Returns
    -------
    dict of standard deviations ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless)
    and ``theta`` (degrees), each (B,) or a float for one pattern, relative
    to each pattern's own lattice; multiply by ``MAE_PER_SIGMA`` for the
    mean absolute error an efficient method reaches.
    """
    single = np.ndim(patterns) == 2
    P = np.asarray(patterns, dtype=np.float64).reshape((-1,) + np.shape(patterns)[-2:])
    B, Qy, Qx = P.shape
    if basis is None or origin is None:
        o0, G0, radius = _lattice(P[0])
        origin = np.broadcast_to(o0, (B, 2)) if origin is None else origin
        basis = G0 if basis is None else basis
    else:
        radius = estimate_probe(P[:1])[1]
    origin = np.broadcast_to(np.asarray(origin, np.float64), (B, 2)).copy()
    G = np.broadcast_to(np.asarray(basis, np.float64), (B, 2, 2)).copy()
    if np.ndim(background) == 0:
        frac = float(background)
        width = 0.5 * np.linalg.norm(G[0], axis=0).min() if background_width is None else background_width
        total = P.sum((1, 2), keepdims=True)
        P = P / total
        if frac > 0:
            P = (1 - frac) * P + frac * diffuse_background(origin, (Qy, Qx), width)
        P = P * (total if dose is None else dose)
    else:
        P = (P if dose is None else dose * P / P.sum((1, 2), keepdims=True)) + np.asarray(background, np.float64)
    # Reflections on the detector (centres at most half a radius off it).
    n = int(np.ceil(max(Qy, Qx) / np.linalg.norm(G[0], axis=0).min())) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    hk = hk[(hk != 0).any(1)]
    c = origin[0] + hk @ G[0].T
    m = 0.5 * radius
    hk = hk[(c[:, 0] > -m) & (c[:, 0] < Qx - 1 + m) & (c[:, 1] > -m) & (c[:, 1] < Qy - 1 + m)]
    length = np.linalg.norm(hk @ G[0].T, axis=1)
    shells = np.unique(np.round(np.log(length) / 0.02).astype(int), return_inverse=True)[1].ravel()

    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    x, g = t(P), t(hk.astype(np.float64)) @ t(G).transpose(-1, -2)  # (B, J, 2)
    eye = torch.eye(2, dtype=torch.float64).expand(B, 2, 2)
    central, radius = disk_profile(P.astype(np.float32), origin, radius)
    with torch.no_grad():
        first = fit_disk_lattice(x, t(origin), eye, g, t(central), DISK_DR, radius, iterations=3,
                                 regather=(1, 2))
        o1 = first["origin"].numpy()
        centres = o1[:, None] + (g @ first["A"].transpose(-1, -2)).numpy()
        bg = background_profile(P, o1, centres, radius)
        second = fit_disk_lattice(x, first["origin"], first["A"], g, t(central), DISK_DR, radius, background=t(bg),
                                  iterations=2, regather=(1,), local_background=False)
        o2 = second["origin"].numpy()
        centres = o2[:, None] + (g @ second["A"].transpose(-1, -2)).numpy()
        centres[~second["on"][:, 1:].numpy()] = np.nan
        measured = shell_profiles(P, o2, centres, second["amplitudes"][:, 1:].numpy(), bg,
                                  second["background"].numpy(), shells, radius)
        measured = np.pad(measured, ((0, 0), (0, max(0, len(central) - measured.shape[1]))))[:, : len(central)]
        tables = np.vstack([central[None], np.where(np.isfinite(measured), measured, central[None])])
        final = fit_disk_lattice(x, second["origin"], second["A"], g, t(tables), DISK_DR, radius,
                                 rows=torch.as_tensor(shells + 1), background=t(bg), background_dr=BACKGROUND_DR,
                                 iterations=2, regather=(1,), local_background=False, unbiased=False,
                                 plateau_floor=0.0)  # Poisson weights: the Fisher information itself
    info = final["information"].numpy()
    cov_A = np.linalg.inv(info + 1e-12 * np.trace(info, axis1=1, axis2=2)[:, None, None] * np.eye(6))[:, 2:, 2:]
    K = np.zeros((B, 4, 4))
    K[:, :2, :2] = np.swapaxes(G, -1, -2)
    K[:, 2:, 2:] = np.swapaxes(G, -1, -2)
    cov = K @ cov_A @ np.swapaxes(K, -1, -2)  # G = A G0: each row of A times G0
    cov_ref = None if not reference_size else cov.mean(0) / reference_size
    Gf = final["A"].numpy() @ G
    sd = strain_uncertainty(Gf, Gf.mean(0), cov, cov_ref)
    return {k: float(v[0]) if single else v.astype(np.float64) for k, v in sd.items()}
