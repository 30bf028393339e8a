"""Readers of bright-field images and image series.

A series is several files (one frame each, or stacks, concatenated in the
order given) or one stack. Colour images are averaged to grey.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from stemae.data.readers import _check_file, _rsciio_plugin
from stemae.errors import InputError

IMAGE_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".dm3", ".dm4")


def _grey(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.names:  # RGB(A) records
        return np.mean([arr[c].astype(np.float32) for c in arr.dtype.names if c != "A"], 0)
    return arr


def _read_one(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    plugin = _rsciio_plugin(suffix)
    if plugin is None or suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown image type {suffix!r}; stemae reads {', '.join(IMAGE_SUFFIXES)}")
    signals = importlib.import_module(plugin["api"]).file_reader(str(path))
    sig = next((s for s in signals if np.asarray(s["data"]).ndim in (2, 3)), None)
    if sig is None:
        raise InputError(f"{path}: holds no 2D image or 3D stack")
    return np.asarray(sig["data"])


def read_images(paths) -> tuple[np.ndarray, list[str]]:
    """Read images into one series.

    Parameters
    ----------
    paths : one path or a list of paths: ``.npy``, TIFF, PNG/JPEG/BMP,
        DigitalMicrograph ``.dm3``/``.dm4``; each a 2D image or a 3D stack

    Returns
    -------
    images : (T, H, W) float32
    names : T frame names (``file`` or ``file[i]`` for frames of a stack)

    Raises
    ------
    InputError
        A missing, empty, unreadable or non-image file, non-finite pixels, or
        frames of different sizes (the message lists the files and shapes).
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise InputError("no images given")
    frames, names = [], []
    for path in paths:
        _check_file(path)
        try:
            arr = _grey(_read_one(path))
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{path}: cannot read it as an image: truncated or corrupt file? ({e})") from None
        if arr.ndim == 2:
            frames.append(arr)
            names.append(path.name)
        elif arr.ndim == 3:
            frames.extend(arr)
            names.extend(f"{path.name}[{i}]" for i in range(len(arr)))
        else:
            raise InputError(f"{path}: expected a 2D image or a 3D stack, got shape {arr.shape}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        listing = ", ".join(f"{n} {f.shape[0]}x{f.shape[1]}" for n, f in zip(names, frames))
        raise InputError(f"the images of a series must have one size; got {listing}")
    images = np.stack(frames).astype(np.float32)
    bad = ~np.isfinite(images)
    if bad.any():
        t = int(np.argwhere(bad)[0, 0])
        raise InputError(f"{names[t]}: holds non-finite pixels (NaN or inf)")
    return images, names
