"""A second, independently written generator of bright-field domain images.

It shares no code and no stripe model with :mod:`stemae.simulate.domains`,
so a benchmark over both cannot pass by matching one simulator:

- regions are the arg-max of several smooth random fields (blobs of uneven
  size, not a Voronoi tessellation);
- a stripe region is a sequence of domains whose widths are drawn from a
  gamma distribution (a real film's walls are not evenly spaced: a spread
  of 22 % in width), with walls
  of an error-function profile (width ``wall`` px, from sharp to soft) and a
  smooth bending of the stripes by a displacement along their normal;
- contrast is multiplicative, the illumination a random quadratic surface,
  bend contours dark Lorentzian rings around random centres; noise is
  Poisson plus Gaussian read-out noise.

The truth carries the type of every pixel and the local wave vector: the
stripe normal, bent by the displacement's gradient, over twice the width of
the pixel's domain (so its average over an area is the number of domain
pairs per unit length there, what a spectrum's peak measures).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from stemae.simulate.domains import WALL_ANGLES, DomainImages


def _field(shape, scale: float, rng) -> np.ndarray:
    """Smooth random field of unit standard deviation (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    return f / f.std()


def _blobs(shape, n: int, scale: float, rng) -> np.ndarray:
    """Region index ``(H, W)``: the largest of ``n`` smooth random fields."""
    return np.argmax(np.stack([_field(shape, scale, rng) for _ in range(n)]), axis=0)


def _domain_walls(length: float, period: float, shape_k: float, rng) -> np.ndarray:
    """Wall positions along a line ``[-length, length]``: gamma-distributed
    domain widths of mean ``period / 2`` (shape ``shape_k``)."""
    widths = rng.gamma(shape_k, period / 2 / shape_k, size=int(4 * length / period) + 8)
    return -length + rng.uniform(0, period) + np.cumsum(widths)


def _stripe_region(shape, angle: float, period: float, wall: float, bend: np.ndarray, rng):
    """Stripes ``(H, W)`` in [-1, 1] and their local wave vector ``(H, W, 2)``, cycles per px."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    t = np.deg2rad(angle)
    normal = np.array([-np.sin(t), np.cos(t)])
    s = normal[0] * (xx - W / 2) + normal[1] * (yy - H / 2) + bend
    walls = _domain_walls(np.abs(s).max() + 2 * period, period, 20.0, rng)
    # Domains alternate in sign between walls; the profile is an erf of the
    # distance to the nearer wall.
    i = np.clip(np.searchsorted(walls, s), 1, len(walls) - 1)
    d = np.minimum(s - walls[i - 1], walls[i] - s)
    profile = np.where(i % 2 == 0, 1.0, -1.0) * special.erf(d / max(wall, 1e-3))
    by, bx = np.gradient(bend)
    width = (walls[i] - walls[i - 1])[..., None]
    wave = (normal[None, None] + np.stack([bx, by], -1)) / (2 * width)
    return profile, wave


def patchwork_images(n_images: int = 1, shape=(768, 768), *, n_regions: int = 8, period_range=(18.0, 35.0),
                     wall: float = 1.0, contrast=(0.08, 0.2), type_weights=(1, 1, 1, 1, 1), bend_contours: int = 2,
                     dose: float = 200.0, read_noise: float = 3.0, seed: int = 0) -> DomainImages:
    """Bright-field images of stripe domains, independent of the main simulator.

    Parameters
    ----------
    n_images : frames T
    shape : (H, W) pixels
    n_regions : smooth fields competing for the pixels (regions; some may vanish)
    period_range : (min, max) mean stripe period (two domain widths), px, per region
    wall : wall width (erf scale), px: 0.5 is sharp, a quarter period soft
    contrast : (min, max) relative stripe contrast per region
    type_weights : probabilities (5,) of domain-free, 0, 90, +45 and -45 degrees
    bend_contours : dark rings per image
    dose : mean counts per pixel; read_noise : Gaussian noise, counts
    seed : random seed

    Returns
    -------
    DomainImages (``temperatures`` are frame indices)
    """
    rng = np.random.default_rng([seed, 77])
    H, W = shape
    p = np.asarray(type_weights, float) / np.sum(type_weights)
    out_img, out_lab, out_wave = [], [], []
    for _ in range(n_images):
        region = _blobs(shape, n_regions, min(shape) / 10, rng)
        types = rng.choice(5, n_regions, p=p)
        img = np.ones(shape)
        wave = np.full(shape + (2,), np.nan)
        for r in range(n_regions):
            m = region == r
            if types[r] == 0 or not m.any():
                continue
            period = rng.uniform(*period_range)
            bend = 0.6 * period * _field(shape, 3 * period, rng)
            stripes, k = _stripe_region(shape, WALL_ANGLES[int(types[r])] + rng.normal(0, 2.0), period, wall, bend,
                                        rng)
            img[m] *= 1 + rng.uniform(*contrast) * stripes[m]
            wave[m] = k[m]
        yy, xx = (np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]) - 0.5
        c = rng.uniform(-0.25, 0.25, 5)
        img *= 1 + c[0] * xx + c[1] * yy + c[2] * xx * xx + c[3] * yy * yy + c[4] * xx * yy
        for _ in range(bend_contours):
            cy, cx = rng.uniform(-0.5, 1.5, 2) * (H, W)
            radius = rng.uniform(0.3, 0.8) * max(H, W)
            d = np.hypot(yy * H + H / 2 - cy, xx * W + W / 2 - cx) - radius
            img *= 1 - rng.uniform(0.2, 0.4) / (1 + (d / rng.uniform(8, 20)) ** 2)
        counts = rng.poisson(dose * np.clip(img, 0, None)) + rng.normal(0, read_noise, shape)
        out_img.append(counts.astype(np.float32))
        out_lab.append(types[region].astype(np.uint8))
        out_wave.append(wave.astype(np.float32))
    return DomainImages(np.stack(out_img), np.stack(out_lab), np.stack(out_wave), np.arange(n_images, dtype=float))
