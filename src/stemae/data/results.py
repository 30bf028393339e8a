"""Results stores and atomic writes.

A results store is a zarr group in the version 2 format (which zarr 2 and
zarr 3 both read) with one array per map. Each array carries ``units`` and
``description`` attributes and its dimension names (``_ARRAY_DIMENSIONS``,
the convention xarray reads); the group carries the conventions,
the method and its parameters, the calibration, and its provenance: the
stemae version, the command, the time it was written, the input and, where
a model made it, the bundle and its weights' checksum.
Nothing is ever half-written in place of a good result: every writer builds
its output beside the target and swaps it in only when complete.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import shutil
import uuid
from pathlib import Path

import numpy as np

from stemae.errors import InputError

RESULTS_KIND = "stemae-results"
#: The kind of a run's scratch store while it maps (see :mod:`stemae.runner`).
PARTIAL_KIND = "stemae-partial"


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
    if path.exists() and not path.is_dir() and tmp.is_dir():
        _remove(tmp)
        raise InputError(f"{path} exists and is not a folder")
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


def check_output(path, kind: str = "folder", replaceable: str | None = None) -> Path:
    """Refuse an output path that cannot be written, before any computation.

    Parameters
    ----------
    path : the folder or file a command will write
    kind : ``"folder"`` or ``"file"``
    replaceable : for a folder that is replaced as a whole (a model
        bundle): the file that marks one written by stemae (e.g.
        ``"config.json"``); an existing folder without it, and not empty,
        is refused rather than replaced

    Raises
    ------
    InputError
        The path is the other kind; an existing parent is a file; the nearest
        existing folder is not writable; or a folder to be replaced is not one
        stemae wrote.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder")
    if kind == "file" and path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    if replaceable is not None and path.is_dir() and any(path.iterdir()) and not (path / replaceable).is_file():
        raise InputError(f"{path} is a folder that stemae did not write; refusing to replace it (choose a new name)")
    parent = path if kind == "folder" else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {parent} is not writable")
    return path


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
    arrays : dict of {name: (ndarray, units, description, dimension names)}
    attrs : dict, optional
        Group attributes (JSON-serialisable after NumPy conversion).
    """
    import zarr

    path = Path(path)
    if path.exists() and not _is_results(path):
        raise InputError(f"{path} exists and is not a stemae results store; refusing to overwrite it")
    from stemae import __version__

    attrs = {"stemae_version": __version__, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **(attrs or {})}
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        root.attrs.update(_jsonable({"kind": RESULTS_KIND, **attrs}))
        for name, (arr, units, description, dims) in arrays.items():
            arr = np.asarray(arr)
            if len(dims) != arr.ndim:
                raise ValueError(f"{name}: {len(dims)} dimension names for {arr.ndim} dimensions")
            z = root.create_array(name, shape=arr.shape, dtype=arr.dtype)
            z[...] = arr
            z.attrs.update({"units": units, "description": description, "_ARRAY_DIMENSIONS": list(dims)})
    return path


def store_kind(path) -> str | None:
    """The ``kind`` attribute of the zarr group at ``path`` (None if it is none)."""
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get("kind")
    except Exception:
        return None


def _is_results(path: Path) -> bool:
    return store_kind(path) == RESULTS_KIND


def read_results(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a results store: ``(arrays, attrs)``; array attributes are in
    ``attrs['arrays'][name]``."""
    import zarr

    path = Path(path)
    if not _is_results(path):
        if store_kind(path) == PARTIAL_KIND:
            raise InputError(f"{path}: an incomplete run, not results; run the same command again to resume it")
        raise InputError(f"{path}: not a stemae results store")
    root = zarr.open_group(str(path), mode="r")
    arrays = {k: v[...] for k, v in root.arrays()}
    attrs = dict(root.attrs)
    attrs["arrays"] = {k: dict(v.attrs) for k, v in root.arrays()}
    return arrays, attrs
