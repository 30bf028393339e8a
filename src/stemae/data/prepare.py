"""Raw detector data made fit to map: dark or pedestal subtracted, bad
pixels (a detector mask, and any NaN or Inf) filled from their neighbours,
detector pixels binned. Lazy: whatever part of the scan a method reads (a
block of rows, or single patterns drawn for training) is cleaned as it is
read, so random access costs what it did on the raw file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from stemae.data.readers import Datacube, as_datacube_array
from stemae.errors import InputError

#: Rounds of neighbour filling for masked pixels: holes up to about twice
#: this many pixels across are filled; a pattern with a larger one keeps
#: NaN there and is refused by name when read.
FILL_ROUNDS = 8


def read_detector_array(path, pattern_shape: tuple[int, int], what: str) -> np.ndarray:
    """A detector-shaped image ``(Qy, Qx)`` from ``.npy`` or an image file
    (TIFF, PNG, ...; RosettaSciIO), checked against ``pattern_shape``."""
    from stemae.data.images import read_images

    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise InputError(f"{what} {path}: no such file")
        arr = np.load(path, allow_pickle=False)
    else:
        arr = read_images([path])[0][0]
    arr = np.squeeze(np.asarray(arr))
    if arr.shape != tuple(pattern_shape):
        raise InputError(f"{what} {path} is {'x'.join(map(str, arr.shape))} but the patterns are "
                         f"{pattern_shape[0]}x{pattern_shape[1]}")
    return arr


def fill_masked(patterns: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Masked pixels of patterns replaced by the mean of their unmasked
    3x3 neighbours, repeated :data:`FILL_ROUNDS` times so holes fill inwards.

    Parameters
    ----------
    patterns : (..., Qy, Qx) float
    bad : bool, broadcastable to ``patterns``

    Returns
    -------
    (..., Qy, Qx) float32; pixels a hole too large leaves unfilled are NaN
    """
    out = np.where(bad, 0.0, patterns).astype(np.float32)
    good = np.broadcast_to(~bad, out.shape).astype(np.float32)
    size = (1,) * (out.ndim - 2) + (3, 3)
    for _ in range(FILL_ROUNDS):
        if good.all():
            break
        total = ndimage.uniform_filter(out * good, size, mode="constant")
        count = ndimage.uniform_filter(good, size, mode="constant")
        fill = (good == 0) & (count > 1e-6)
        out = np.where(fill, total / np.maximum(count, 1e-6), out)
        good = np.where(fill, 1.0, good)
    return np.where(good > 0, out, np.nan).astype(np.float32)


def _clean(block: np.ndarray, dark, mask, factor: int) -> np.ndarray:
    """Patterns ``(..., Qy, Qx)`` cleaned: dark subtracted, bad pixels filled, binned."""
    x = np.asarray(block, np.float32)
    if dark is not None:
        x = np.maximum(x - dark, 0.0)
    bad = ~np.isfinite(x)
    if mask is not None:
        bad = bad | mask
    if bad.any():
        x = fill_masked(x, bad)
    if factor > 1:
        *lead, Qy, Qx = x.shape
        x = x.reshape(*lead, Qy // factor, factor, Qx // factor, factor).sum((-3, -1))
    return x


class CleanedView:
    """A read-only array-like ``(Ry, Rx, Qy // bin, Qx // bin)`` float32 over
    raw patterns: indexing the scan axes reads those patterns from ``data``
    and cleans them (:func:`_clean`); the detector axes are always whole."""

    def __init__(self, data, dark, mask, factor: int):
        self.data, self.dark, self.mask, self.factor = data, dark, mask, factor
        Ry, Rx, Qy, Qx = data.shape
        self.shape = (Ry, Rx, Qy // factor, Qx // factor)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        scan, detector = (key + (slice(None),) * 2)[:2], key[2:]
        raw = np.asarray(self.data[scan + (slice(0, self.shape[2] * self.factor),
                                           slice(0, self.shape[3] * self.factor))])
        out = _clean(raw, self.dark, self.mask, self.factor)
        return out[(Ellipsis,) + detector] if detector else out

    def __array__(self, dtype=None, copy=None):
        """The whole cleaned datacube in memory."""
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def prepare(cube: Datacube, *, dark=None, mask=None, bin: int = 1) -> Datacube:
    """The datacube as the methods should see it.

    Parameters
    ----------
    cube : Datacube (Ry, Rx, Qy, Qx)
    dark : None, a pedestal (counts, a number) or a dark reference
        ``(Qy, Qx)`` subtracted from every pattern (negative results clipped to 0)
    mask : None or bool ``(Qy, Qx)``, True at bad detector pixels (dead,
        hot, a beam stop's edge); they, and any NaN or Inf pixel of a
        pattern, are filled from their neighbours (:func:`fill_masked`)
    bin : sum ``bin x bin`` detector pixels (the detector cropped to a
        multiple of ``bin``); the reciprocal pixel size grows by ``bin``

    Returns
    -------
    Datacube whose ``data`` is a :class:`CleanedView` (float32, lazy,
    sliced along the scan axes like the raw array); ``source`` and
    ``calibration`` updated
    """
    Qy, Qx = cube.pattern_shape
    if bin < 1 or bin > min(Qy, Qx) // 8:
        raise InputError(f"--bin {bin}: must be at least 1 and leave patterns of at least 8x8 "
                         f"(the detector is {Qy}x{Qx})")
    if dark is not None and not np.isscalar(dark):
        dark = np.asarray(dark, np.float32)
        if dark.shape != (Qy, Qx) or not np.isfinite(dark).all():
            raise InputError(f"the dark reference must be a finite {Qy}x{Qx} image, got {dark.shape}")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (Qy, Qx):
            raise InputError(f"the detector mask must be {Qy}x{Qx}, got {mask.shape}")
        if mask.mean() > 0.5:
            raise InputError(f"the detector mask marks {mask.mean():.0%} of the pixels as bad; it should be True "
                             "only at bad pixels")
    opener = None if cube.opener is None else {**cube.opener, "prepare": {"dark": dark, "mask": mask, "bin": bin}}
    Qy2, Qx2 = Qy // bin * bin, Qx // bin * bin
    dark = dark[:Qy2, :Qx2] if dark is not None and not np.isscalar(dark) else dark
    mask = mask[:Qy2, :Qx2] if mask is not None else None
    # A view, not a Dask graph over the cleaning: a Dask array computes a
    # whole chunk to give one pattern of it, and training draws single
    # patterns all over the scan.
    data = CleanedView(as_datacube_array(cube.data, None, cube.source), dark, mask, bin)
    steps = [f"dark {dark if np.isscalar(dark) else 'reference'}" if dark is not None else "",
             f"{int(mask.sum())} masked pixels" if mask is not None else "", f"bin {bin}" if bin > 1 else ""]
    steps = [s for s in steps if s]
    cal = cube.calibration
    if bin > 1 and cal.q_pixel_size is not None:
        cal = replace(cal, q_pixel_size=cal.q_pixel_size * bin)
    source = cube.source + (f" ({', '.join(steps)})" if steps else "")
    return Datacube(data, cal, source, cube.extra, opener)
