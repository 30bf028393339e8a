"""Synthetic bright-field STEM images of ferroelectric stripe domains with truth.

An image is a tessellation of regions with rough walls; each region is
domain-free or holds stripe domains whose walls run at 0, 90, +45 or -45
degrees, with its own period, contrast and a smoothly wandering wall phase.
On top come bend contours (dark curved bands), an illumination gradient, a
faint amorphous mottle and Poisson shot noise. A series keeps the regions of
one sample area and lets the domain type of each region follow the
temperature: a/c domains (0 and 90 degrees) give way to a/a domains (+45 and
-45 degrees) around 60 C, and the domains vanish towards 190 C.

Conventions: images are ``(H, W)`` with ``x`` along columns and ``y`` along
rows (down); a wall angle is measured from ``+x`` towards ``+y``, in degrees,
nominally 0, 90, +45 or -45 with a few degrees of scatter per region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

#: Ground-truth label of each domain type, and the wall angle of the stripe types.
DOMAIN_TYPES = ("domain-free", "0 deg", "90 deg", "+45 deg", "-45 deg")
WALL_ANGLES = {1: 0.0, 2: 90.0, 3: 45.0, 4: -45.0}


@dataclass
class DomainImages:
    """Simulated images with their truth.

    Attributes
    ----------
    images : (T, H, W) float32, counts per pixel
    labels : (T, H, W) uint8, index into :data:`DOMAIN_TYPES`
    angle : (T, H, W) float32, wall angle in degrees (NaN where domain-free)
    period : (T, H, W) float32, stripe period in pixels (NaN where domain-free)
    temperatures : (T,) float64, the series label of each frame
    """

    images: np.ndarray
    labels: np.ndarray
    angle: np.ndarray
    period: np.ndarray
    temperatures: np.ndarray

    def fractions(self, centres: np.ndarray | None = None) -> np.ndarray:
        """True fraction of each domain type per frame, ``(T, 5)``: over all
        pixels, or over the points ``centres`` ``(..., 2)`` ``(y, x)``."""
        lab = self.labels if centres is None else self.labels_at(centres)
        lab = lab.reshape(len(lab), -1)
        return np.stack([(lab == k).mean(1) for k in range(len(DOMAIN_TYPES))], 1)

    def labels_at(self, centres: np.ndarray) -> np.ndarray:
        """Truth labels ``(T, ...)`` at pixel centres ``(..., 2)`` ``(y, x)``."""
        iy = np.clip(np.round(centres[..., 0]).astype(int), 0, self.labels.shape[1] - 1)
        ix = np.clip(np.round(centres[..., 1]).astype(int), 0, self.labels.shape[2] - 1)
        return self.labels[:, iy, ix]


def _smooth_noise(shape, sigma: float, rng) -> np.ndarray:
    """Gaussian random field of unit standard deviation, correlation length ``sigma`` px."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * gain, s=shape)
    return f / f.std()


def region_map(shape, n_regions: int, roughness: float, rng) -> np.ndarray:
    """Tessellation ``(H, W)`` int of ``n_regions`` regions with rough walls.

    Seeds are spread by best-candidate sampling; walls wander by about
    ``roughness`` pixels (a smooth displacement field of correlation length
    25 px)."""
    H, W = shape
    seeds = [rng.uniform((0, 0), (H, W))]
    for _ in range(n_regions - 1):
        cand = rng.uniform((0, 0), (H, W), size=(20, 2))
        d = np.min(np.linalg.norm(cand[:, None] - np.asarray(seeds)[None], axis=-1), 1)
        seeds.append(cand[np.argmax(d)])
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    yy += roughness * _smooth_noise(shape, 25.0, rng)
    xx += roughness * _smooth_noise(shape, 25.0, rng)
    _, idx = cKDTree(np.asarray(seeds)).query(np.stack([yy.ravel(), xx.ravel()], 1))
    return idx.reshape(H, W)


def _stripes(box: tuple[slice, slice], angle_deg: float, period: float, phase_noise: np.ndarray, offset: float,
             sharpness: float) -> np.ndarray:
    """Stripe profile in ``[-1, 1]`` with walls along ``angle_deg`` over the pixels of ``box``."""
    yy, xx = np.mgrid[box].astype(np.float64)
    t = np.deg2rad(angle_deg)
    phase = 2 * np.pi * (-xx * np.sin(t) + yy * np.cos(t)) / period + offset + phase_noise
    return np.tanh(sharpness * np.cos(phase)) / np.tanh(sharpness)


def _bend_contours(shape, n: int, rng) -> np.ndarray:
    """Multiplicative map of ``n`` dark curved bands about 20 px wide."""
    out = np.ones(shape)
    for _ in range(n):
        g = _smooth_noise(shape, min(shape) / 5, rng)
        gy, gx = np.gradient(g)
        d = (g - rng.uniform(-1, 1)) / np.mean(np.hypot(gx, gy))
        out *= 1 - rng.uniform(0.2, 0.45) * np.exp(-0.5 * (d / 10.0) ** 2)
    return out


def _render(regions: np.ndarray, types: np.ndarray, periods: np.ndarray, jitter: np.ndarray, dose: float,
            rng) -> tuple[np.ndarray, ...]:
    """One image and its truth maps from a tessellation and per-region types."""
    shape = regions.shape
    H, W = shape
    img = 1 + 0.03 * _smooth_noise(shape, 3.0, rng)
    angle = np.full(shape, np.nan, np.float32)
    period = np.full(shape, np.nan, np.float32)
    labels = types[regions].astype(np.uint8)
    wander = 0.8 * _smooth_noise(shape, 30.0, rng)
    for r, box in enumerate(ndimage.find_objects(regions + 1)):
        if box is None or types[r] == 0:
            continue
        m = regions[box] == r
        a = WALL_ANGLES[int(types[r])] + jitter[r]
        s = _stripes(box, a, periods[r], wander[box], rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0))
        img[box][m] += rng.uniform(0.12, 0.25) * s[m]
        angle[box][m], period[box][m] = a, periods[r]
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    img *= (1 + gy * (yy - 0.5) + gx * (xx - 0.5)) * _bend_contours(shape, 2, rng)
    counts = rng.poisson(dose * np.clip(img, 0, None)) if dose > 0 else img
    return counts.astype(np.float32), labels, angle, period


def _balanced_types(n_regions: int, rng) -> np.ndarray:
    """Region types covering all five types as evenly as ``n_regions`` allows."""
    k = len(DOMAIN_TYPES)
    return rng.permutation(np.resize(np.arange(k), n_regions))


def simulate_domain_images(n_images: int = 1, shape=(768, 768), n_regions: int = 10,
                           period_range=(8.0, 18.0), roughness: float = 12.0, dose: float = 200.0,
                           seed: int = 0) -> DomainImages:
    """Independent images, each with its own regions, all five types present.

    Parameters
    ----------
    n_images : number of frames T
    shape : (H, W) pixels
    n_regions : regions per image (at least 5 so every type appears)
    period_range : (min, max) stripe period in pixels, drawn per region
    roughness : wall wander in pixels
    dose : mean counts per pixel (Poisson); 0 for noise-free
    seed : random seed
    """
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_images):
        regions = region_map(shape, n_regions, roughness, rng)
        types = _balanced_types(n_regions, rng)
        periods = rng.uniform(*period_range, n_regions)
        frames.append(_render(regions, types, periods, rng.uniform(-4, 4, n_regions), dose, rng))
    img, lab, ang, per = (np.stack(x) for x in zip(*frames))
    return DomainImages(img, lab, ang, per, np.arange(n_images, dtype=np.float64))


def series_fractions(temperature) -> np.ndarray:
    """Target fractions ``(..., 3)`` of (domain-free, a/c, a/a) at a temperature in C."""
    t = np.asarray(temperature, dtype=np.float64)
    free = 1 / (1 + np.exp(-(t - 150.0) / 12.0))
    aa = (1 - free) * (0.15 + 0.7 / (1 + np.exp(-(t - 60.0) / 8.0)))
    return np.stack([free, 1 - free - aa, aa], -1)


def simulate_domain_series(temperatures=(25, 50, 75, 100, 125, 150, 175, 200), shape=(768, 768),
                           n_regions: int = 24, period_range=(8.0, 18.0), roughness: float = 12.0,
                           dose: float = 200.0, seed: int = 0) -> DomainImages:
    """A temperature series of one sample area.

    The regions stay; each region has a fixed random rank that decides, with
    :func:`series_fractions`, its type at each temperature, so the domain
    fractions follow the temperature the way a real film's would (a/c to a/a
    near 60 C, domain-free towards 190 C). Each frame has its own noise,
    bend contours and illumination. Parameters as in
    :func:`simulate_domain_images`.
    """
    rng = np.random.default_rng(seed)
    regions = region_map(shape, n_regions, roughness, rng)
    rank = rng.permutation(n_regions) / n_regions + 0.5 / n_regions
    variant = rng.integers(0, 2, n_regions)
    periods = rng.uniform(*period_range, n_regions)
    jitter = rng.uniform(-4, 4, n_regions)
    frames = []
    for t in temperatures:
        free, ac, _ = series_fractions(t)
        types = np.where(rank < free, 0, np.where(rank < free + ac, 1 + variant, 3 + variant))
        frames.append(_render(regions, types, periods, jitter, dose, rng))
    img, lab, ang, per = (np.stack(x) for x in zip(*frames))
    return DomainImages(img, lab, ang, per, np.asarray(temperatures, dtype=np.float64))
