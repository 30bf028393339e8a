"""Lock-in amplitude of a stripe wave at points of an image.

A window's spectrum says which stripe wave a region holds, but only over the
whole window (four periods): near a wall it mixes both sides. Once the wave
is known, its local amplitude can be read much more finely by complex
demodulation: the image's relative contrast times ``exp(-2 pi i k . x)``,
averaged under a Gaussian of about half a period. The amplitude of a wave
at a point over its amplitude inside its own region is the share of the
Gaussian that region covers: one half on a straight wall. Walls bend and
periods drift within a region, so a wave is read at both points as the
largest amplitude over a small bank of turns and stretches of it
(:func:`banked_lock_in`).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft, ndimage

#: Standard deviation of the lock-in's Gaussian, in periods of the wave.
LOCK_IN_WIDTH = 0.5
#: Turns (degrees) and stretches of the period of the bank of waves a stripe
#: wave is read with (:func:`banked_lock_in`): a Gaussian of half a period
#: passes waves within about 18 degrees and 30 % of its own.
BANK_TURNS = (-12.0, 0.0, 12.0)
BANK_STRETCHES = (0.87, 1.0, 1.15)


def relative_contrast(frame: np.ndarray, scale: float) -> np.ndarray:
    """``frame`` over its Gaussian-smoothed self (standard deviation
    ``scale`` px, the longest stripe period) minus 1, ``(H, W)``: stripes
    stay, illumination gradients and the darkening of bend contours go."""
    frame = np.asarray(frame, np.float64)
    smooth = ndimage.gaussian_filter(frame, scale, mode="reflect")
    return (frame / np.maximum(smooth, 1e-12 * max(float(smooth.max()), 1e-300)) - 1.0).astype(np.float32)


def lock_in(contrast: np.ndarray, points: np.ndarray, waves: np.ndarray, sigma: np.ndarray,
            batch_size: int = 256) -> np.ndarray:
    """Amplitude of stripe waves at points of an image.

    Parameters
    ----------
    contrast : (H, W) relative contrast (:func:`relative_contrast`)
    points : (N, 2) pixel positions ``(y, x)`` (rounded to whole pixels)
    waves : (N, 2) or (N, K, 2) wave vectors ``(kx, ky)``, cycles per px
        (``K`` waves read at each point)
    sigma : (N,) or (N, K) standard deviation of each Gaussian, px

    Returns
    -------
    (N,) or (N, K) ``|sum g (contrast) exp(-2 pi i k . x)| / sum g`` over
    the image pixels within three standard deviations of the largest
    Gaussian: half the wave's contrast inside a region of it, less towards
    its walls. Gaussian and wave are separable in ``y`` and ``x``, so each
    point's patch is gathered once and each wave costs two small products.
    """
    points = np.round(np.asarray(points)).astype(int).reshape(-1, 2)
    waves = np.asarray(waves, np.float64)
    single = waves.ndim == 2
    waves = waves[:, None] if single else waves
    sigma = np.asarray(sigma, np.float64)
    sigma = sigma[:, None] if single else sigma
    out = np.zeros(waves.shape[:2])
    if not len(points):
        return out[:, 0] if single else out
    r = int(np.ceil(3 * sigma.max()))
    padded = np.pad(contrast, r)
    inside = np.pad(np.ones(contrast.shape, np.float32), r)
    d = np.arange(-r, r + 1)
    for i in range(0, len(points), batch_size):
        p, k, s = points[i:i + batch_size], waves[i:i + batch_size], sigma[i:i + batch_size]
        rows = (p[:, 0] + r)[:, None, None] + d[None, :, None]
        cols = (p[:, 1] + r)[:, None, None] + d[None, None, :]
        patch, mask = padded[rows, cols], inside[rows, cols]  # (B, n, n), rows y, columns x
        g = np.exp(-0.5 * d[None, None, :] ** 2 / s[..., None] ** 2)  # (B, K, n)
        ex = g * np.exp(-2j * np.pi * k[..., 0, None] * d)
        ey = g * np.exp(-2j * np.pi * k[..., 1, None] * d)
        z = np.einsum("bki,bij,bkj->bk", ey, patch, ex)
        norm = np.einsum("bki,bij,bkj->bk", g, mask, g)
        out[i:i + batch_size] = np.abs(z) / norm
    return out[:, 0] if single else out


def banked_lock_in(contrast: np.ndarray, points: np.ndarray, angle: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Largest :func:`lock_in` amplitude over a bank of waves around a stripe
    wave: wall angle turned by :data:`BANK_TURNS`, period stretched by
    :data:`BANK_STRETCHES`, each read under a Gaussian of
    :data:`LOCK_IN_WIDTH` of its own period. Stripes that bend, or whose
    walls are spaced unevenly, keep their amplitude where the window's
    mean wave no longer fits them.

    Parameters
    ----------
    contrast : (H, W) relative contrast (:func:`relative_contrast`)
    points : (N, 2) pixel positions ``(y, x)``
    angle : (N,) wall angles, degrees (walls normal to the wave vector)
    period : (N,) stripe periods, px

    Returns
    -------
    (N,) amplitudes, as :func:`lock_in`
    """
    angle = np.asarray(angle, np.float64).reshape(-1, 1, 1)
    period = np.asarray(period, np.float64).reshape(-1, 1, 1) * np.asarray(BANK_STRETCHES)[None, None, :]
    theta = np.deg2rad(angle + np.asarray(BANK_TURNS)[None, :, None])  # (N, turns, stretches)
    waves = np.stack([-np.sin(theta), np.cos(theta)], -1) / period[..., None]
    sigma = np.broadcast_to(LOCK_IN_WIDTH * period, waves.shape[:3])
    bank = len(BANK_TURNS) * len(BANK_STRETCHES)
    return lock_in(contrast, points, waves.reshape(len(waves), bank, 2), sigma.reshape(len(waves), bank)).max(-1)


def amplitude_map(contrast: np.ndarray, angles, periods) -> np.ndarray:
    """Largest :func:`lock_in` amplitude over a bank of waves at every pixel
    of an image, ``(H, W)``: every wall angle of ``angles`` (degrees) with
    every period of ``periods`` (px), each under a Gaussian of
    :data:`LOCK_IN_WIDTH` of its period and normalised by the Gaussian's
    weight inside the image, as :func:`lock_in` at a point; computed by FFT
    convolution for the whole image at once."""
    H, W = contrast.shape
    periods = np.asarray(periods, np.float64)
    r = int(np.ceil(3 * LOCK_IN_WIDTH * periods.max()))
    padded = np.pad(np.asarray(contrast, np.float64), r)
    shape = padded.shape
    f_inside = sfft.rfft2(np.pad(np.ones((H, W)), r))
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    best = np.zeros((H, W))
    for period in periods:
        gauss = np.exp(-2 * np.pi ** 2 * (LOCK_IN_WIDTH * period) ** 2 * (kx ** 2 + ky ** 2))
        half = gauss[:, :shape[1] // 2 + 1]
        norm = sfft.irfft2(f_inside * half, shape)[r:r + H, r:r + W]
        for angle in np.deg2rad(np.asarray(angles, np.float64)):
            wave = np.exp(-2j * np.pi * (-np.sin(angle) * xx + np.cos(angle) * yy) / period)
            z = sfft.ifft2(sfft.fft2(padded * wave) * gauss)[r:r + H, r:r + W]
            best = np.maximum(best, np.abs(z) / np.maximum(norm, 1e-12))
    return best
