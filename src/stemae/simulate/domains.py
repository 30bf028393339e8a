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
nominally 0, 90, +45 or -45 with a few degrees of scatter per region. The
truth's wall angle and period are local: the stripes' phase gradient (their
wander included) at every pixel; :meth:`DomainImages.window_truth` averages
it over analysis windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from stemae.geometry import wall_angle

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
    wave : (T, H, W, 2) float32, local stripe wave vector ``(kx, ky)`` in
        cycles per pixel (the phase gradient over 2 pi; NaN where domain-free)
    temperatures : (T,) float64, the series label of each frame
    """

    images: np.ndarray
    labels: np.ndarray
    wave: np.ndarray
    temperatures: np.ndarray

    @property
    def angle(self) -> np.ndarray:
        """Local wall angle ``(T, H, W)``, degrees in [-90, 90) (walls are normal to the wave vector)."""
        return wall_angle(self.wave)

    @property
    def period(self) -> np.ndarray:
        """Local stripe period ``(T, H, W)``, pixels."""
        return 1.0 / np.linalg.norm(self.wave, axis=-1)

    def window_truth(self, centres: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Wall angle and period ``(T, ny, nx)`` a window shows: its local
        wave vectors averaged with the Hann taper's weights over the pixels of
        the centre's region type; NaN where the centre is domain-free.

        Parameters
        ----------
        centres : (ny, nx, 2) window centres ``(y, x)``, pixels
        window : window side, pixels
        """
        h1 = np.hanning(window)
        taper = h1[:, None] * h1[None, :]
        T = len(self.images)
        ny, nx = centres.shape[:2]
        ang, per = np.full((T, ny, nx), np.nan), np.full((T, ny, nx), np.nan)
        lab = self.labels_at(centres)
        for t in range(T):
            for i in range(ny):
                for j in range(nx):
                    if lab[t, i, j] == 0:
                        continue
                    y0 = int(round(centres[i, j, 0] - (window - 1) / 2))
                    x0 = int(round(centres[i, j, 1] - (window - 1) / 2))
                    box = (t, slice(y0, y0 + window), slice(x0, x0 + window))
                    w = taper * (self.labels[box] == lab[t, i, j])
                    k = np.nansum(self.wave[box] * w[..., None], axis=(0, 1)) / w.sum()
                    ang[t, i, j], per[t, i, j] = wall_angle(k), 1.0 / np.linalg.norm(k)
        return ang, per

    def fractions(self, centres: np.ndarray | None = None) -> np.ndarray:
        """True fraction of each domain type per frame, ``(T, 5)``: over all
        pixels, or over the points ``centres`` ``(..., 2)`` ``(y, x)``."""
        lab = self.labels if centres is None else self.labels_at(centres)
        lab = lab.reshape(len(lab), -1)
        return np.stack([(lab == k).mean(1) for k in range(len(DOMAIN_TYPES))], 1)

    def wall_distance(self) -> np.ndarray:
        """Distance (px) of every pixel to the nearest pixel of another type, ``(T, H, W)``."""
        out = np.full(self.labels.shape, np.inf)
        for t, lab in enumerate(self.labels):
            for k in np.unique(lab):
                m = lab == k
                out[t][m] = ndimage.distance_transform_edt(m)[m]
        return out

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


def _stripes(box: tuple[slice, slice], angle_deg: float, period: float, phase_noise: np.ndarray,
             noise_gradient: np.ndarray, offset: float, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """Stripe profile in ``[-1, 1]`` with walls along ``angle_deg`` over the
    pixels of ``box``, and its local wave vector ``(..., 2)`` in cycles per
    pixel (``noise_gradient``: the phase noise's gradient ``(..., 2)``, x first)."""
    yy, xx = np.mgrid[box].astype(np.float64)
    t = np.deg2rad(angle_deg)
    phase = 2 * np.pi * (-xx * np.sin(t) + yy * np.cos(t)) / period + offset + phase_noise
    wave = np.array([-np.sin(t), np.cos(t)]) / period + noise_gradient / (2 * np.pi)
    return np.tanh(sharpness * np.cos(phase)) / np.tanh(sharpness), wave


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
            rng, *, sharpness=(1.0, 3.0), contrast=(0.12, 0.25), fade=None, bend_contours: int = 2,
            wander: float = 0.8) -> tuple[np.ndarray, ...]:
    """One image and its truth maps from a tessellation and per-region types
    (``fade``: per-region factor on the stripe contrast, 0 removes them)."""
    shape = regions.shape
    H, W = shape
    img = 1 + 0.03 * _smooth_noise(shape, 3.0, rng)
    wave = np.full(shape + (2,), np.nan, np.float32)
    labels = types[regions].astype(np.uint8)
    noise = wander * _smooth_noise(shape, 30.0, rng)
    gy, gx = np.gradient(noise)
    grad = np.stack([gx, gy], -1)
    for r, box in enumerate(ndimage.find_objects(regions + 1)):
        if box is None or types[r] == 0:
            continue
        m = regions[box] == r
        a = WALL_ANGLES[int(types[r])] + jitter[r]
        s, k = _stripes(box, a, periods[r], noise[box], grad[box], rng.uniform(0, 2 * np.pi),
                        rng.uniform(*sharpness))
        amp = rng.uniform(*contrast) * (1.0 if fade is None else fade[r])
        img[box][m] += amp * s[m]
        wave[box][m] = k[m]
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    img *= (1 + gy * (yy - 0.5) + gx * (xx - 0.5)) * _bend_contours(shape, bend_contours, rng)
    counts = rng.poisson(dose * np.clip(img, 0, None)) if dose > 0 else img
    return counts.astype(np.float32), labels, wave


def _region_types(n_regions: int, rng, weights=None) -> np.ndarray:
    """Region types: all five as evenly as ``n_regions`` allows, or drawn with
    probabilities ``weights`` (5,) (unequal fractions)."""
    k = len(DOMAIN_TYPES)
    if weights is None:
        return rng.permutation(np.resize(np.arange(k), n_regions))
    return rng.choice(k, n_regions, p=np.asarray(weights, float) / np.sum(weights))


def simulate_domain_images(n_images: int = 1, shape=(768, 768), n_regions: int = 10,
                           period_range=(8.0, 18.0), roughness: float = 12.0, dose: float = 200.0,
                           seed: int = 0, *, sharpness=(1.0, 3.0), contrast=(0.12, 0.25), bend_contours: int = 2,
                           type_weights=None) -> DomainImages:
    """Independent images, each with its own regions.

    Parameters
    ----------
    n_images : number of frames T
    shape : (H, W) pixels
    n_regions : regions per image (at least 5 so every type appears when
        ``type_weights`` is None)
    period_range : (min, max) stripe period in pixels, drawn per region
    roughness : wall wander in pixels
    dose : mean counts per pixel (Poisson); 0 for noise-free
    seed : random seed
    sharpness : (min, max) of the wall sharpness ``s`` per region: the
        profile is ``tanh(s cos(phase))``, near a sine for ``s`` below 0.5
        and a square wave with sharp walls above 5
    contrast : (min, max) stripe amplitude relative to the mean intensity
    bend_contours : number of bend contours per image
    type_weights : probabilities (5,) of the region types, for unequal
        fractions; None covers all five evenly
    """
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_images):
        regions = region_map(shape, n_regions, roughness, rng)
        types = _region_types(n_regions, rng, type_weights)
        periods = rng.uniform(*period_range, n_regions)
        frames.append(_render(regions, types, periods, rng.uniform(-4, 4, n_regions), dose, rng,
                              sharpness=sharpness, contrast=contrast, bend_contours=bend_contours))
    img, lab, wave = (np.stack(x) for x in zip(*frames))
    return DomainImages(img, lab, wave, np.arange(n_images, dtype=np.float64))


def series_fractions(temperature) -> np.ndarray:
    """Target fractions ``(..., 3)`` of (domain-free, a/c, a/a) at a temperature in C."""
    t = np.asarray(temperature, dtype=np.float64)
    free = 1 / (1 + np.exp(-(t - 150.0) / 12.0))
    aa = (1 - free) * (0.15 + 0.7 / (1 + np.exp(-(t - 60.0) / 8.0)))
    return np.stack([free, 1 - free - aa, aa], -1)


def simulate_domain_series(temperatures=(25, 50, 75, 100, 125, 150, 175, 200), shape=(768, 768),
                           n_regions: int = 24, period_range=(8.0, 18.0), roughness: float = 12.0,
                           dose: float = 200.0, seed: int = 0, *, fade: float = 30.0) -> DomainImages:
    """A temperature series of one sample area.

    The regions stay; each region has a fixed random rank that decides, with
    :func:`series_fractions`, its type at each temperature, so the domain
    fractions follow the temperature the way a real film's would (a/c to a/a
    near 60 C, domain-free towards 190 C). A region's stripes fade as it
    nears the temperature where it turns domain-free, their contrast going
    as ``sqrt((T_r - T) / fade)`` within ``fade`` C of it (an order
    parameter; 0 switches them off at once). Each frame has its own noise,
    bend contours and illumination. Other parameters as in
    :func:`simulate_domain_images`.
    """
    rng = np.random.default_rng(seed)
    regions = region_map(shape, n_regions, roughness, rng)
    rank = rng.permutation(n_regions) / n_regions + 0.5 / n_regions
    variant = rng.integers(0, 2, n_regions)
    periods = rng.uniform(*period_range, n_regions)
    jitter = rng.uniform(-4, 4, n_regions)
    t_free = 150.0 + 12.0 * np.log(rank / (1 - rank))  # where series_fractions' free share reaches the rank
    frames = []
    for t in temperatures:
        free, ac, _ = series_fractions(t)
        types = np.where(rank < free, 0, np.where(rank < free + ac, 1 + variant, 3 + variant))
        strength = np.sqrt(np.clip((t_free - t) / fade, 0, 1)) if fade > 0 else np.ones(n_regions)
        frames.append(_render(regions, types, periods, jitter, dose, rng, fade=strength))
    img, lab, wave = (np.stack(x) for x in zip(*frames))
    return DomainImages(img, lab, wave, np.asarray(temperatures, dtype=np.float64))
