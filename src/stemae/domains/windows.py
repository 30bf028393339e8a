"""Windowed FFTs of images: local periodicity and symmetry on a grid.

Each window is normalised to zero mean and unit variance (so illumination,
dose and contrast changes do not matter), tapered with a symmetric Hann
window, Fourier transformed, and the log-magnitude of its spectrum is cropped
to ``k x k`` pixels around zero frequency. The window grid is centred in the
image, so a 90-degree rotation of an image whose leftover margin is even maps
the grid onto itself and every spectrum onto the rotated spectrum.
"""

from __future__ import annotations

import numpy as np
import torch

from stemae.errors import InputError


#: Default window side (pixels): three to six periods of typical 8-16 px stripes.
DEFAULT_WINDOW = 48


def default_window(shape) -> int:
    """:data:`DEFAULT_WINDOW`, or the smaller image side (even) if that is less."""
    return min(DEFAULT_WINDOW, min(shape)) // 2 * 2


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """First pixel of each window along one axis, the grid centred in ``size``."""
    n = (size - window) // stride + 1
    span = (n - 1) * stride + window
    return (size - span) // 2 + stride * np.arange(n)


def window_centres(shape, window: int, stride: int) -> np.ndarray:
    """Centres ``(ny, nx, 2)`` ``(y, x)`` in pixels of the windows on an image of ``shape``."""
    ys = window_starts(shape[0], window, stride) + (window - 1) / 2
    xs = window_starts(shape[1], window, stride) + (window - 1) / 2
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1)


def check_windowing(shape, window: int, stride: int, crop: int) -> None:
    """Raise :class:`InputError` for a window, stride or crop the image cannot take."""
    if window < 8:
        raise InputError(f"window {window} px is too small: use at least 8 px")
    if window > min(shape):
        raise InputError(f"window {window} px is larger than the image ({shape[0]}x{shape[1]} px)")
    if stride < 1:
        raise InputError(f"stride must be at least 1 px, got {stride}")
    if crop % 2 == 0 or crop < 5:
        raise InputError(f"the spectrum crop must be odd and at least 5, got {crop}")
    if crop > window - 1:
        raise InputError(f"window {window} px is too small for {crop}x{crop} spectra: use at least {crop + 1} px")


def hann(window: int, device=None) -> torch.Tensor:
    """Symmetric 2D Hann taper ``(window, window)`` scaled to unit root-sum-square,
    so that white noise of unit variance has spectral magnitudes near 1."""
    h1 = torch.hann_window(window, periodic=False, dtype=torch.float64, device=device)
    h = h1[:, None] * h1[None, :]
    return (h / h.square().sum().sqrt()).float()


def spectra_of_windows(patches: torch.Tensor, taper: torch.Tensor, crop: int) -> torch.Tensor:
    """Log-magnitude spectra ``(..., crop, crop)`` of windows ``(..., w, w)``.

    Each window is normalised to zero mean and unit variance, multiplied by
    ``taper`` and transformed; zero frequency is at the centre pixel
    ``crop // 2``, the row index is ``ky`` and the column index ``kx``, in
    cycles per window. The normalisation is applied in Fourier space (the
    transform is linear) and only half of each spectrum is computed: the
    other half is its point reflection.
    """
    w, h = patches.shape[-1], crop // 2
    mean = patches.mean((-2, -1), keepdim=True)
    std = patches.std((-2, -1), keepdim=True).clamp_min(1e-6)
    f = torch.fft.rfft2(patches * taper)
    f = (f - mean * torch.fft.rfft2(taper)).abs() / std
    f = torch.fft.fftshift(f, dim=-2)[..., w // 2 - h:w // 2 + h + 1, :h + 1]
    return torch.log1p(torch.cat([f[..., 1:].flip(-1, -2), f], -1))


def window_ffts(images, window: int | None = None, stride: int | None = None, crop: int = 33,
                device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Windowed log-magnitude FFTs of an image or a series.

    Parameters
    ----------
    images : (H, W) or (T, H, W) array
    window : window side in pixels (default :func:`default_window`)
    stride : step between windows in pixels (default ``window // 4``)
    crop : side of the central crop of each spectrum, odd, in frequency pixels
    device : torch device for the transforms

    Returns
    -------
    spectra : (T, ny, nx, crop, crop) float32
    centres : (ny, nx, 2) float64, window centres ``(y, x)`` in pixels
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"images must be (H, W) or (T, H, W), got shape {arr.shape}")
    window = default_window(arr.shape[1:]) if window is None else int(window)
    stride = max(window // 4, 1) if stride is None else int(stride)
    check_windowing(arr.shape[1:], window, stride, crop)
    ys, xs = window_starts(arr.shape[1], window, stride), window_starts(arr.shape[2], window, stride)
    taper = hann(window, device)
    out = np.empty((arr.shape[0], len(ys), len(xs), crop, crop), np.float32)
    with torch.no_grad():
        for i, frame in enumerate(arr):
            x = torch.as_tensor(np.ascontiguousarray(frame, np.float32), device=device)
            x = x[:, xs[0]:xs[-1] + window]
            rows = max(1, 4096 // len(xs))
            for r in range(0, len(ys), rows):
                band = x[ys[r]:ys[min(r + rows, len(ys)) - 1] + window]
                patches = band.unfold(0, window, stride).unfold(1, window, stride)
                out[i, r:r + rows] = spectra_of_windows(patches, taper, crop).cpu().numpy()
    return out, window_centres(arr.shape[1:], window, stride)
