"""Synthetic nanobeam 4D-STEM of 2D crystals with a per-position ground truth.

The model is kinematic-like but keeps what matters for a fair test of strain
mapping: Bragg disks keep the probe-aperture radius while their centres move
with the local lattice, disk intensities differ between reflections and vary
slowly across the scan (thickness and tilt), the central beam carries most of
the electrons for thin crystals, and there is Poisson dose, a diffuse
Lorentzian background and descan (the pattern centre drifting across the scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from stemae.data.calibration import Calibration, electron_wavelength
from stemae.geometry import (
    deformation_from_strain,
    reciprocal_from_deformation,
    rotation_matrix,
    strain_from_deformation,
)
from stemae.shapes import disk_edge


@dataclass(frozen=True)
class Phase:
    """A 2D crystal projection.

    Parameters
    ----------
    name : str
    a, b : float
        Real-space lattice constants in angstrom (``b`` defaults to ``a``).
    gamma : float
        Angle between the real-space vectors ``a1`` and ``a2`` in degrees
        (120 for a hexagonal lattice, 90 for square or rectangular).
    """

    name: str
    a: float
    b: float | None = None
    gamma: float = 90.0

    def real_basis(self) -> np.ndarray:
        """Real-space basis ``(2, 2)`` in angstrom, columns ``a1``, ``a2``."""
        b = self.a if self.b is None else self.b
        g = np.radians(self.gamma)
        return np.array([[self.a, b * np.cos(g)], [0.0, b * np.sin(g)]])

    def reciprocal_basis(self) -> np.ndarray:
        """Reciprocal basis ``(2, 2)`` in 1/angstrom (no 2 pi), columns ``g1``, ``g2``."""
        return np.linalg.inv(self.real_basis()).T


WS2 = Phase("WS2", 3.153, gamma=120.0)
WSE2 = Phase("WSe2", 3.282, gamma=120.0)
CUBIC = Phase("cubic", 3.905)
TETRAGONAL = Phase("tetragonal", 3.99, 4.03)


@dataclass
class SimulatedDatacube:
    """A simulated datacube and its ground truth.

    Attributes
    ----------
    data : ndarray, shape (Ry, Rx, Qy, Qx), float32
        Detector counts.
    truth : dict of ndarray
        ``g1``, ``g2`` (Ry, Rx, 2): true reciprocal basis vectors in detector
        pixels, ``(x, y)``; ``origin`` (Ry, Rx, 2): true central-beam
        position in pixels; ``phase`` (Ry, Rx): phase index; ``e_xx``,
        ``e_yy``, ``e_xy`` (dimensionless) and ``theta`` (degrees): strain
        and rotation of each position relative to its own phase's unstrained,
        oriented lattice (``F = R U``); ``orientation`` (Ry, Rx): in-plane
        orientation of the crystal in degrees; ``disk_positions``
        (Ry, Rx, M, 2): Bragg-disk centres in pixels (NaN for unused slots)
        and ``disk_intensity`` (Ry, Rx, M): each whole disk's expected
        electrons (before the detector edge cuts it; a fraction of one
        electron when ``dose`` is None).
    phases : list of Phase
    calibration : Calibration
    radius : float
        Bragg-disk radius in detector pixels.
    """

    data: np.ndarray
    truth: dict[str, np.ndarray]
    phases: list[Phase]
    calibration: Calibration
    radius: float
    params: dict = field(default_factory=dict)


def render_disks(
    positions: np.ndarray,
    amplitudes: np.ndarray,
    shape: tuple[int, int],
    radius: float,
    edge: float = 0.5,
) -> np.ndarray:
    """Draw soft-edged disks of one radius into a batch of patterns.

    Parameters
    ----------
    positions : ndarray, shape (B, N, 2)
        Disk centres ``(x, y)`` in pixels; NaN entries are skipped.
    amplitudes : ndarray, shape (B, N)
        Integrated intensity of each whole disk (electrons). The part of a
        disk that falls off the detector is lost, as on a real detector.
    shape : (Qy, Qx)
    radius : float
        Disk radius in pixels (the probe aperture; the same for every disk).
    edge : float
        Standard deviation of the edge blur in pixels.

    Returns
    -------
    ndarray, shape (B, Qy, Qx), float64
    """
    B, N, _ = positions.shape
    Qy, Qx = shape
    half = int(np.ceil(radius + 4 * edge + 1))
    off = np.arange(-half, half + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    ok = np.isfinite(positions).all(-1) & (amplitudes > 0)
    b_idx, n_idx = np.nonzero(ok)
    p = positions[b_idx, n_idx]
    base = np.round(p).astype(np.int64)
    px = base[:, 0, None, None] + ox
    py = base[:, 1, None, None] + oy
    r = np.hypot(px - p[:, 0, None, None], py - p[:, 1, None, None])
    prof = disk_edge(r, radius, edge)
    prof *= (amplitudes[b_idx, n_idx] / prof.sum(axis=(1, 2)))[:, None, None]
    inside = (px >= 0) & (px < Qx) & (py >= 0) & (py < Qy)
    flat = (b_idx[:, None, None] * Qy + py) * Qx + px
    out = np.bincount(flat[inside], weights=prof[inside], minlength=B * Qy * Qx)
    return out.reshape(B, Qy, Qx)


def descan_origins(scan_shape: tuple[int, int], center, descan: float) -> np.ndarray:
    """Central-beam position of every scan position, ``(Ry, Rx, 2)`` ``(x, y)``
    pixels: ``center`` at the scan centre, drifting linearly by ``descan``
    pixels along x over the scan columns and half that along y over the rows."""
    Ry, Rx = scan_shape
    v, u = np.meshgrid(
        np.linspace(-0.5, 0.5, Ry) if Ry > 1 else [0.0],
        np.linspace(-0.5, 0.5, Rx) if Rx > 1 else [0.0],
        indexing="ij",
    )
    return np.stack([center[0] + descan * u, center[1] + 0.5 * descan * v], -1)


def diffuse_background(origins: np.ndarray, shape: tuple[int, int], width: float) -> np.ndarray:
    """Diffuse background of unit sum per pattern, a Lorentzian around the central beam.

    Parameters
    ----------
    origins : ndarray (B, 2)
        Central-beam positions ``(x, y)`` in pixels.
    shape : (Qy, Qx)
    width : float
        Half width at half maximum in pixels.

    Returns
    -------
    ndarray (B, Qy, Qx), float64, each pattern summing to 1 over the detector.
    """
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    q2 = ((xx[None] - origins[:, 0, None, None]) ** 2 + (yy[None] - origins[:, 1, None, None]) ** 2) / width**2
    bg = 1.0 / (1.0 + q2)
    return bg / bg.sum(axis=(1, 2), keepdims=True)


def detector_counts(patterns: np.ndarray, origins: np.ndarray, background: float, width: float,
                    dose: float | None, rng: np.random.Generator) -> np.ndarray:
    """Diffracted intensities turned into detector counts: a share ``background``
    of the electrons moved into a diffuse background, then Poisson noise.

    Parameters
    ----------
    patterns : ndarray (B, Qy, Qx)
        Diffracted intensity (any scale; normalised to unit sum here).
    origins : ndarray (B, 2)
        Central-beam positions ``(x, y)``, pixels (the background's centre).
    background : float
        Fraction of the electrons in the background (0 for none).
    width : float
        Background half width at half maximum, pixels.
    dose : float or None
        Mean electrons per pattern; ``None`` returns expected counts per electron
        (unit sum) without noise.
    rng : numpy Generator

    Returns
    -------
    ndarray (B, Qy, Qx): counts (float64 expected values when ``dose`` is None).
    """
    pat = np.asarray(patterns, dtype=np.float64)
    pat = pat / pat.sum(axis=(1, 2), keepdims=True)
    if background > 0:
        pat = (1 - background) * pat + background * diffuse_background(origins, pat.shape[1:], width)
    return pat if dose is None else rng.poisson(pat * dose)


def _reflections(G_px: np.ndarray, g_max: float) -> np.ndarray:
    """Integer indices ``(M, 2)`` of all reflections with ``|g| <= g_max``
    (central beam excluded) for a basis ``G_px`` (2, 2) in pixels."""
    gmin = np.min(np.linalg.norm(G_px, axis=0))
    n = int(np.ceil(2 * g_max / gmin)) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    g = hk @ G_px.T
    keep = (np.linalg.norm(g, axis=1) <= g_max) & np.any(hk != 0, axis=1)
    return hk[keep]


def _smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth random field of unit standard deviation, shape ``shape``."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def simulate_datacube(
    F: np.ndarray,
    phase_map: np.ndarray,
    phases: list[Phase],
    *,
    orientation: np.ndarray | float = 0.0,
    pattern_shape: tuple[int, int] = (128, 128),
    q_pixel_size: float | None = None,
    energy_kev: float = 300.0,
    convergence_mrad: float = 1.5,
    central_fraction: float = 0.6,
    dose: float | None = 1e5,
    background: float = 0.0,
    descan: float = 0.0,
    center: tuple[float, float] | None = None,
    intensity_variation: float = 0.3,
    edge: float = 0.5,
    g_decay: float = 1.5,
    r_pixel_size: float = 0.5,
    seed: int = 0,
    batch: int = 512,
) -> SimulatedDatacube:
    """Simulate a 4D-STEM datacube from a deformation field.

    Parameters
    ----------
    F : ndarray, shape (Ry, Rx, 2, 2)
        Real-space deformation of each position relative to its phase's
        unstrained, oriented lattice (``a = F a_phase``).
    phase_map : ndarray of int, shape (Ry, Rx)
        Index into ``phases`` for each position.
    phases : list of Phase
    orientation : float or ndarray (Ry, Rx)
        In-plane crystal orientation in degrees (positive from +x to +y).
    pattern_shape : (Qy, Qx)
        Detector size in pixels (any size, not only powers of two).
    q_pixel_size : float, optional
        Reciprocal pixel size in 1/angstrom. Default: the first reflection
        of ``phases[0]`` lands at 17 % of the smaller detector side.
    energy_kev, convergence_mrad : float
        Beam energy (keV) and probe convergence semi-angle (mrad); together
        with ``q_pixel_size`` they fix the disk radius.
    central_fraction : float
        Fraction of the electrons in the central disk (about 0.97 for a
        monolayer, smaller for thicker crystals).
    dose : float or None
        Mean electrons per pattern; Poisson noise is applied. ``None`` gives
        noise-free expected counts.
    background : float
        Fraction of the electrons in a diffuse Lorentzian background.
    descan : float
        Drift of the pattern centre across the scan in pixels: ``descan``
        along x over the scan columns and half that along y over the rows.
    center : (x, y), optional
        Pattern centre at the scan centre; default slightly off the detector
        centre, off the pixel grid.
    intensity_variation : float
        Strength of the slow thickness/tilt-like modulation of the disk
        intensities across the scan (0 for none).
    edge : float
        Disk edge blur in pixels.
    g_decay : float
        Reflection intensities fall as ``exp(-(|g| / (g_decay |g1|))^2)``.
    r_pixel_size : float
        Scan step in nm (calibration only).
    seed : int
    batch : int
        Patterns rendered at a time (memory only).

    Returns
    -------
    SimulatedDatacube
    """
    rng = np.random.default_rng(seed)
    F = np.asarray(F, dtype=np.float64)
    Ry, Rx = F.shape[:2]
    Qy, Qx = pattern_shape
    phase_map = np.asarray(phase_map)
    orient = np.broadcast_to(np.asarray(orientation, dtype=np.float64), (Ry, Rx))
    g0 = np.linalg.norm(phases[0].reciprocal_basis(), axis=0).min()
    if q_pixel_size is None:
        q_pixel_size = g0 / (0.17 * min(Qy, Qx))
    lam = electron_wavelength(energy_kev)
    radius = convergence_mrad * 1e-3 / lam / q_pixel_size
    if center is None:
        center = ((Qx - 1) / 2 + 0.37, (Qy - 1) / 2 - 0.61)
    g_max = min(Qy, Qx) / 2 - 0.5 * radius

    # True reciprocal bases in detector pixels.
    G = np.empty((Ry, Rx, 2, 2))
    for i, ph in enumerate(phases):
        sel = phase_map == i
        G0 = rotation_matrix(np.radians(orient[sel])) @ (ph.reciprocal_basis() / q_pixel_size)
        G[sel] = reciprocal_from_deformation(F[sel], G0)

    # Reflection list and structure-factor-like intensities per phase.
    refl, weights = [], []
    for i, ph in enumerate(phases):
        Gp = ph.reciprocal_basis() / q_pixel_size
        hk = _reflections(Gp, g_max * 1.1)
        gn = np.linalg.norm(hk @ Gp.T, axis=1)
        prng = np.random.default_rng([seed, i, 7])
        mod = {}
        m = np.empty(len(hk))
        for j, (h, k) in enumerate(hk):  # Friedel pairs share a structure factor
            key = (h, k) if (h, k) > (-h, -k) else (-h, -k)
            m[j] = mod.setdefault(key, prng.lognormal(0.0, 0.3))
        w = np.exp(-((gn / (g_decay * gn.min())) ** 2)) * m
        on = gn <= g_max
        w *= (1 - central_fraction) / w[on].sum()
        refl.append(hk)
        weights.append(w)
    n_refl = max(len(r) for r in refl)

    # Slow thickness/tilt-like fields and descan.
    sig = max(Ry, Rx) / 8
    tilt = np.stack([_smooth_field(rng, (Ry, Rx), sig) for _ in range(2)], -1)
    thick = _smooth_field(rng, (Ry, Rx), sig)
    origin = descan_origins((Ry, Rx), center, descan)

    q0 = 0.5 * g0 / q_pixel_size
    data = np.empty((Ry, Rx, Qy, Qx), dtype=np.float32)
    disk_pos = np.full((Ry * Rx, n_refl, 2), np.nan, dtype=np.float32)
    disk_int = np.zeros((Ry * Rx, n_refl), dtype=np.float32)
    flat_idx = np.arange(Ry * Rx)
    for start in range(0, Ry * Rx, batch):
        idx = flat_idx[start : start + batch]
        r, c = np.unravel_index(idx, (Ry, Rx))
        nb = len(idx)
        pos = np.full((nb, n_refl + 1, 2), np.nan)
        amp = np.zeros((nb, n_refl + 1))
        o = origin[r, c]
        pos[:, 0] = o
        # Thicker places scatter more: the scattered share follows the thickness field.
        cf = 1 - np.clip((1 - central_fraction) * np.exp(0.5 * intensity_variation * thick[r, c]), 0.0, 1.0)
        amp[:, 0] = cf
        for i in range(len(phases)):
            sel = phase_map[r, c] == i
            if not sel.any():
                continue
            hk, w = refl[i], weights[i]
            g = np.einsum("bij,mj->bmi", G[r[sel], c[sel]], hk)  # (b, M, 2)
            gn = np.linalg.norm(g, axis=-1)
            ghat = g / gn[..., None]
            order = np.minimum(gn / gn.min(axis=1, keepdims=True), 2.0)
            mod = np.exp(intensity_variation * order * np.einsum("bmi,bi->bm", ghat, tilt[r[sel], c[sel]]))
            mod *= np.clip(1 + 0.5 * intensity_variation * thick[r[sel], c[sel]], 0.1, None)[:, None]
            a = w[None, :] * mod
            a *= ((1 - cf[sel]) / a.sum(axis=1))[:, None]
            m = len(hk)
            pos[sel, 1 : m + 1] = o[sel, None, :] + g
            amp[sel, 1 : m + 1] = a
        pat = render_disks(pos, amp, (Qy, Qx), radius, edge)
        disk_pos[idx] = pos[:, 1:]
        scale = (1 - background) * (1.0 if dose is None else dose) / pat.sum(axis=(1, 2))  # as detector_counts
        disk_int[idx] = amp[:, 1:] * scale[:, None]
        data.reshape(Ry * Rx, Qy, Qx)[idx] = detector_counts(pat, o, background, q0, dose, rng)

    # Ground-truth strain of each position relative to its own phase.
    truth = {k: v.astype(np.float32) for k, v in strain_from_deformation(F).items()}
    truth.update(
        g1=G[..., :, 0].astype(np.float32),
        g2=G[..., :, 1].astype(np.float32),
        origin=origin.astype(np.float32),
        phase=phase_map.astype(np.int16),
        orientation=orient.astype(np.float32),
        disk_positions=disk_pos.reshape(Ry, Rx, n_refl, 2),
        disk_intensity=disk_int.reshape(Ry, Rx, n_refl),
    )
    calibration = Calibration(
        r_pixel_size=r_pixel_size,
        r_units="nm",
        q_pixel_size=float(q_pixel_size),
        q_units="1/A",
        beam_energy_kev=energy_kev,
        convergence_semiangle_mrad=convergence_mrad,
    )
    params = dict(
        pattern_shape=[Qy, Qx],
        central_fraction=central_fraction,
        dose=dose,
        background=background,
        descan=descan,
        intensity_variation=intensity_variation,
        disk_radius_px=float(radius),
        seed=seed,
        phases=[p.name for p in phases],
    )
    return SimulatedDatacube(data, truth, list(phases), calibration, float(radius), params)


def _bump(shape, center, sigma) -> np.ndarray:
    r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * sigma**2))


def heterostructure(
    scan_shape: tuple[int, int] = (64, 64),
    pattern_shape: tuple[int, int] = (128, 128),
    *,
    dose: float | None = 1e5,
    central_fraction: float = 0.6,
    background: float = 0.0,
    descan: float = 0.0,
    seed: int = 0,
    **kwargs,
) -> SimulatedDatacube:
    """A lateral WS2/WSe2-like heterostructure with a coherent interface.

    WS2 (a = 3.153 A) fills the left of the scan and WSe2 (a = 3.282 A, 4.1 %
    larger) the right, across a wavy interface. Near the interface the two
    lattices match along it: WS2 is stretched and WSe2 compressed along y,
    with a Poisson contraction along x, decaying over an eighth of the scan
    width. A smooth rotation field (up to 0.6 degrees), a local shear bump and
    a gentle e_xx gradient are added on top.

    ``central_fraction`` 0.6 is a few-layer crystal; use 0.97 for a weakly
    scattering monolayer. Other keyword arguments go to
    :func:`simulate_datacube`.
    """
    Ry, Rx = scan_shape
    r, c = np.mgrid[0:Ry, 0:Rx].astype(np.float64)
    x0 = Rx / 2 + 0.06 * Rx * np.sin(2 * np.pi * r / max(Ry, 1))
    d = c - x0
    phase = (d >= 0).astype(int)
    f = WSE2.a / WS2.a - 1
    decay = np.exp(-np.abs(d) / max(Rx / 8, 1))
    e_t = np.where(phase == 0, f / 2 * decay, -f / 2 / (1 + f) * decay)
    nu = 0.22
    e_yy = e_t
    e_xx = -nu * e_t + 0.002 * (r / max(Ry - 1, 1) - 0.5)
    e_xy = 0.004 * _bump(scan_shape, (0.3 * Ry, 0.7 * Rx), 0.12 * max(Ry, Rx))
    theta = np.radians(
        0.6 * _bump(scan_shape, (0.65 * Ry, 0.3 * Rx), 0.15 * max(Ry, Rx))
        - 0.3 * _bump(scan_shape, (0.25 * Ry, 0.25 * Rx), 0.1 * max(Ry, Rx))
    )
    F = deformation_from_strain(e_xx, e_yy, e_xy, theta)
    return simulate_datacube(
        F,
        phase,
        [WS2, WSE2],
        orientation=7.0,
        pattern_shape=pattern_shape,
        dose=dose,
        central_fraction=central_fraction,
        background=background,
        descan=descan,
        seed=seed,
        **kwargs,
    )


def polycrystal(
    scan_shape: tuple[int, int] = (64, 64),
    pattern_shape: tuple[int, int] = (128, 128),
    *,
    n_grains: int = 6,
    dose: float | None = 1e5,
    central_fraction: float = 0.5,
    background: float = 0.0,
    descan: float = 0.0,
    seed: int = 0,
    **kwargs,
) -> SimulatedDatacube:
    """A polycrystal of cubic and tetragonal grains seen along [001].

    Voronoi grains get random in-plane orientations (0 to 90 degrees) and a
    random phase (square lattice a = 3.905 A, or rectangular 3.99 x 4.03 A),
    with a smooth strain field of a few 1e-3 on top. The grain index is in
    ``truth['grain']``. Other keyword arguments go to :func:`simulate_datacube`.
    """
    rng = np.random.default_rng([seed, 101])
    Ry, Rx = scan_shape
    seeds = rng.uniform([0, 0], [Ry, Rx], size=(n_grains, 2))
    r, c = np.mgrid[0:Ry, 0:Rx]
    dist = (r[..., None] - seeds[:, 0]) ** 2 + (c[..., None] - seeds[:, 1]) ** 2
    grain = np.argmin(dist, axis=-1)
    grain_orient = rng.uniform(0, 90, n_grains)
    grain_phase = rng.integers(0, 2, n_grains)
    grain_phase[0] = 0
    sig = max(Ry, Rx) / 6
    e_xx = 0.003 * _smooth_field(rng, scan_shape, sig)
    e_yy = 0.003 * _smooth_field(rng, scan_shape, sig)
    e_xy = 0.002 * _smooth_field(rng, scan_shape, sig)
    theta = np.radians(0.3 * _smooth_field(rng, scan_shape, sig))
    F = deformation_from_strain(e_xx, e_yy, e_xy, theta)
    sim = simulate_datacube(
        F,
        grain_phase[grain],
        [CUBIC, TETRAGONAL],
        orientation=grain_orient[grain],
        pattern_shape=pattern_shape,
        dose=dose,
        central_fraction=central_fraction,
        background=background,
        descan=descan,
        seed=seed,
        **kwargs,
    )
    sim.truth["grain"] = grain.astype(np.int16)
    return sim


PRESETS = {"heterostructure": heterostructure, "polycrystal": polycrystal}
