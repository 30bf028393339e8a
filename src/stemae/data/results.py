"""Results stores and atomic writes.

A results store is a zarr group with one array per map. Each array carries
``units`` and ``description`` attributes; the group carries the conventions,
the method and its parameters, the calibration and the stemae version.
Nothing is ever half-written in place of a good result: every writer builds
its output beside the target and swaps it in only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from stemae.errors import InputError

RESULTS_KIND = "stemae-results"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling path; on success move it onto ``path``.

    Works for files and directories (zarr stores). If the block raises, the
    temporary output is removed and whatever was at ``path`` is untouched.
    An existing directory at ``path`` is swapped out and removed only after
    the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{tag}")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            _remove(tmp)
            raise
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_results(path, arrays: dict, attrs: dict | None = None) -> Path:
    """Write a results store atomically.

    Parameters
    ----------
    path : str or Path
        Target ``.zarr`` directory. An existing stemae results store there
        is replaced only once the new one is complete; anything else there
        is refused rather than overwritten.
    arrays : dict of {name: (ndarray, units, description)}
    attrs : dict, optional
        Group attributes (JSON-serialisable after NumPy conversion).
    """
    import zarr

    path = Path(path)
    if path.exists() and not _is_results(path):
        raise InputError(f"{path} exists and is not a stemae results store; refusing to overwrite it")
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(_jsonable({"kind": RESULTS_KIND, **(attrs or {})}))
        for name, (arr, units, description) in arrays.items():
            arr = np.asarray(arr)
            z = root.create_array(name, shape=arr.shape, dtype=arr.dtype)
            z[...] = arr
            z.attrs.update({"units": units, "description": description})
    return path


def _is_results(path: Path) -> bool:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get("kind") == RESULTS_KIND
    except Exception:
        return False


def read_results(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a results store: ``(arrays, attrs)``; array attributes are in
    ``attrs['arrays'][name]``."""
    import zarr

    path = Path(path)
    if not _is_results(path):
        raise InputError(f"{path}: not a stemae results store")
    root = zarr.open_group(str(path), mode="r")
    arrays = {k: v[...] for k, v in root.arrays()}
    attrs = dict(root.attrs)
    attrs["arrays"] = {k: dict(v.attrs) for k, v in root.arrays()}
    return arrays, attrs
