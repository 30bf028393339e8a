"""Readers and writers of 4D-STEM datacubes.

Every reader returns a :class:`Datacube` whose ``data`` is a lazy Dask array
of shape ``(Ry, Rx, Qy, Qx)``: nothing is loaded until a block is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import dask.array as da
import h5py
import numpy as np

from stemae.data.calibration import Calibration
from stemae.data.results import atomic_path
from stemae.errors import InputError

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".emd", ".py4dstem"}


@dataclass
class Datacube:
    """A 4D-STEM datacube.

    Attributes
    ----------
    data : dask.array.Array, shape (Ry, Rx, Qy, Qx), as read (or, after
        :func:`stemae.data.prepare.prepare`, a view that cleans what is read)
    calibration : Calibration
    source : str
        Where the data came from (path and dataset).
    extra : dict
        Further arrays stored beside the data (for example a simulator's
        ground truth), loaded eagerly; empty for detector files.
    opener : dict or None
        How to open ``data`` again elsewhere (another process, a Dask
        worker): the file and the arguments of :func:`read_datacube` and
        of :func:`~stemae.data.prepare.prepare`; None for data made in
        memory. See :func:`lazy`.
    """

    data: da.Array
    calibration: Calibration = field(default_factory=Calibration)
    source: str = ""
    extra: dict = field(default_factory=dict)
    opener: dict | None = None

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[:2])

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[2:])


def _row_chunks(shape, itemsize: int, target_bytes: int = 64 * 2**20):
    """Chunks along scan rows only, whole patterns per chunk."""
    row_bytes = int(np.prod(shape[1:])) * itemsize
    rows = int(max(1, min(shape[0], target_bytes // max(row_bytes, 1))))
    return (rows,) + tuple(shape[1:])


def as_datacube_array(arr, scan_shape: tuple[int, int] | None, source: str) -> da.Array:
    """Validate shape and dtype and wrap ``arr`` as a Dask array (Ry, Rx, Qy, Qx).

    Parameters
    ----------
    arr : array-like with ``shape``, ``dtype`` and slicing (NumPy, memmap,
        h5py or zarr dataset, Dask array)
    scan_shape : (Ry, Rx), optional
        Needed when ``arr`` is a 3D stack of patterns ``(N, Qy, Qx)``.
    source : str
        Named in error messages.
    """
    shape = tuple(arr.shape)
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise InputError(f"{source}: data type {dtype} is not a real number type")
    if len(shape) == 3:
        if scan_shape is None:
            raise InputError(
                f"{source}: a stack of {shape[0]} patterns of {shape[1]}x{shape[2]}; "
                "give the scan shape (--scan-shape ROWSxCOLS) to make it a 4D datacube"
            )
        if int(np.prod(scan_shape)) != shape[0]:
            raise InputError(
                f"{source}: scan shape {scan_shape[0]}x{scan_shape[1]} needs "
                f"{int(np.prod(scan_shape))} patterns but the file holds {shape[0]}"
            )
    elif len(shape) != 4:
        raise InputError(
            f"{source}: expected a 4D datacube (scan rows, scan cols, detector rows, "
            f"detector cols), got {len(shape)} dimensions with shape {shape}"
        )
    elif scan_shape is not None and tuple(scan_shape) != shape[:2]:
        raise InputError(f"{source}: scan shape {tuple(scan_shape)} does not match the data's {shape[:2]}")
    if 0 in shape:
        raise InputError(f"{source}: the datacube is empty (shape {shape})")
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=_row_chunks(shape, dtype.itemsize), lock=isinstance(arr, h5py.Dataset))
    if len(shape) == 3:
        arr = arr.reshape(tuple(scan_shape) + shape[1:])
    return arr


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")


def _read_npy(path: Path, scan_shape) -> Datacube:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: truncated or corrupt .npy file ({e})") from None
    return Datacube(as_datacube_array(arr, scan_shape, str(path)), source=str(path))


def _py4dstem_calibration(group: h5py.Group) -> Calibration:
    """Calibration from a py4DSTEM/emdfile array group and its metadata bundle."""
    cal = {}
    root = group.parent
    meta = root.get("metadatabundle/calibration")
    if isinstance(meta, h5py.Group):
        for src, dst in [
            ("R_pixel_size", "r_pixel_size"),
            ("R_pixel_units", "r_units"),
            ("Q_pixel_size", "q_pixel_size"),
            ("Q_pixel_units", "q_units"),
        ]:
            if src in meta:
                v = meta[src][()]
                cal[dst] = v.decode() if isinstance(v, bytes) else v
    return Calibration.from_attrs(cal)


def _find_emd_datacube(f: h5py.File) -> h5py.Group | None:
    found = []

    def visit(name, obj):
        if (
            isinstance(obj, h5py.Group)
            and obj.attrs.get("emd_group_type") == "array"
            and isinstance(obj.get("data"), h5py.Dataset)
            and obj["data"].ndim == 4
        ):
            found.append(obj)

    f.visititems(visit)
    found.sort(key=lambda g: g.attrs.get("python_class") != "DataCube")
    return found[0] if found else None


def _read_hdf5(path: Path, dataset: str | None, scan_shape) -> Datacube:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file, truncated or corrupt ({e})") from None
    cal = Calibration()
    extra = {}
    if dataset is not None:
        if dataset not in f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            raise InputError(f"{path}: no dataset {dataset!r}; the file holds {names}")
        obj = f[dataset]
        if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
            cal = _py4dstem_calibration(obj)
            obj = obj["data"]
        elif not isinstance(obj, h5py.Dataset):
            raise InputError(f"{path}: {dataset!r} is a group, not a dataset")
        else:
            cal = Calibration.from_attrs(obj.attrs)
    elif f.attrs.get("emd_group_type") == "file" and (grp := _find_emd_datacube(f)) is not None:
        obj = grp["data"]
        cal = _py4dstem_calibration(grp)
    else:
        cands = []
        f.visititems(  # a simulated file's truth group holds no datacube
            lambda n, o: cands.append(n)
            if isinstance(o, h5py.Dataset) and o.ndim in (3, 4) and o.size > 0 and not n.startswith("truth/")
            else None
        )
        four = [n for n in cands if f[n].ndim == 4]
        pick = four if four else cands
        if len(pick) != 1:
            raise InputError(
                f"{path}: cannot tell which dataset is the datacube "
                f"({'candidates: ' + ', '.join(pick) if pick else 'no 3D or 4D dataset found'}); "
                "name it with --dataset"
            )
        obj = f[pick[0]]
        cal = Calibration.from_attrs(obj.attrs)
        if "truth" in f and isinstance(f["truth"], h5py.Group):
            extra["truth"] = {k: f["truth"][k][()] for k in f["truth"]}
    return Datacube(as_datacube_array(obj, scan_shape, f"{path}:{obj.name}"), cal, f"{path}:{obj.name}", extra)


def _read_zarr(path: Path, dataset: str | None, scan_shape) -> Datacube:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several types for a broken store
        raise InputError(f"{path}: not a readable zarr store ({e})") from None
    extra = {}
    if isinstance(node, zarr.Group):
        if dataset is None:
            arrays = [k for k, v in node.arrays() if v.ndim in (3, 4)]
            if len(arrays) != 1:
                raise InputError(
                    f"{path}: cannot tell which array is the datacube (candidates: {arrays}); name it with --dataset"
                )
            dataset = arrays[0]
        if dataset not in node:
            raise InputError(f"{path}: no array {dataset!r}; the store holds {sorted(node.keys())}")
        if "truth" in node:
            extra["truth"] = {k: v[...] for k, v in node["truth"].arrays()}
        node = node[dataset]
    return Datacube(
        as_datacube_array(node, scan_shape, f"{path}:{dataset or ''}"),
        Calibration.from_attrs(dict(node.attrs)),
        f"{path}:{dataset or ''}",
        extra,
    )


def _rsciio_plugin(suffix: str):
    from rsciio import IO_PLUGINS

    _plain_rsciio_log()
    for plugin in IO_PLUGINS:
        if suffix.lstrip(".").lower() in [e.lower() for e in plugin["file_extensions"]]:
            return plugin
    return None


def _plain_rsciio_log() -> None:
    """RosettaSciIO's messages as plain lines on standard error: its own
    handler colours them with terminal escape codes, which show as raw
    characters in log files and notebooks."""
    import logging

    log = logging.getLogger("rsciio")
    for h in list(log.handlers):
        log.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("RosettaSciIO %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.propagate = False


def _read_rsciio(path: Path, plugin: dict, scan_shape) -> Datacube:
    reader = importlib.import_module(plugin["api"]).file_reader
    kwargs = {"lazy": True}
    if plugin["name"] == "QuantumDetector" and scan_shape is not None:
        kwargs["navigation_shape"] = (scan_shape[1], scan_shape[0])
    try:
        signals = reader(str(path), **kwargs)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: {plugin['name']} reader failed: truncated or corrupt file? ({e})") from None
    sig = next((s for s in signals if s["data"].ndim == 4), None) or next(
        (s for s in signals if s["data"].ndim == 3), None
    )
    if sig is None:
        shapes = [tuple(s["data"].shape) for s in signals]
        raise InputError(f"{path}: holds no 3D or 4D data (shapes {shapes})")
    axes = sorted(sig["axes"], key=lambda a: a.get("index_in_array", 0))
    nav = [a for a in axes if a.get("navigate")]
    det = [a for a in axes if not a.get("navigate", False)]
    cal = {}
    # An axis without physical units (a Merlin file, say) is uncalibrated, not calibrated in "" per pixel.
    if nav and _physical(nav[-1]):
        cal["r_pixel_size"], cal["r_units"] = nav[-1].get("scale", 1.0), str(nav[-1]["units"])
    if det and _physical(det[-1]):
        cal["q_pixel_size"], cal["q_units"] = det[-1].get("scale", 1.0), str(det[-1]["units"])
    tem = sig.get("metadata", {}).get("Acquisition_instrument", {}).get("TEM", {})
    if "beam_energy" in tem:
        cal["beam_energy_kev"] = tem["beam_energy"]
    if "convergence_angle" in tem:
        cal["convergence_semiangle_mrad"] = tem["convergence_angle"]
    return Datacube(as_datacube_array(sig["data"], scan_shape, str(path)), Calibration.from_attrs(cal), str(path))


def _physical(axis: dict) -> bool:
    """Whether a RosettaSciIO axis carries physical units (not none, undefined or pixels)."""
    return str(axis.get("units") or "").strip().lower() not in ("", "<undefined>", "undefined", "px", "pixel",
                                                                  "pixels")


def read_datacube(path, dataset: str | None = None, scan_shape: tuple[int, int] | None = None) -> Datacube:
    """Open a 4D-STEM datacube lazily.

    Parameters
    ----------
    path : str or Path
        ``.npy``; HDF5 (``.h5``, ``.hdf5``, ``.emd``: a named dataset, a
        py4DSTEM/EMD 1.0 file, or a file with a single 3D/4D dataset);
        a zarr store (``.zarr``); or any detector format RosettaSciIO reads
        (``.mib``, ``.blo``, ``.dm4``, ``.dm3``, ...).
    dataset : str, optional
        Dataset (HDF5) or array (zarr) name inside the file.
    scan_shape : (Ry, Rx), optional
        Reshape a stack of patterns ``(N, Qy, Qx)`` into a scan.

    Returns
    -------
    Datacube
        ``data`` is a Dask array ``(Ry, Rx, Qy, Qx)``.

    Raises
    ------
    InputError
        With a message naming the problem: missing, empty, truncated or
        unknown file, missing dataset, wrong number of dimensions.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    opener = {"path": str(path.resolve()), "dataset": dataset, "scan_shape": scan_shape}
    if suffix == ".npy":
        return replace(_read_npy(path, scan_shape), opener=opener)
    if suffix in HDF5_SUFFIXES:
        return replace(_read_hdf5(path, dataset, scan_shape), opener=opener)
    if suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()):
        return replace(_read_zarr(path, dataset, scan_shape), opener=opener)
    plugin = _rsciio_plugin(suffix)
    if plugin is not None:
        return replace(_read_rsciio(path, plugin, scan_shape), opener=opener)
    raise InputError(
        f"{path}: unknown file type {suffix!r}; stemae reads .npy, HDF5 (.h5, .hdf5, .emd), "
        ".zarr and the detector formats of RosettaSciIO (.mib, .blo, .dm4, ...)"
    )


class Reopened:
    """A datacube's data that pickles as the way to open it
    (:attr:`Datacube.opener`) and opens it on first use in each process,
    so Dask workers read their own blocks from the file. Array-like
    ``(Ry, Rx, Qy, Qx)``, sliced along the scan axes."""

    def __init__(self, opener: dict, shape: tuple[int, ...], dtype):
        self.opener, self.shape, self.dtype, self.ndim = opener, tuple(shape), np.dtype(dtype), len(shape)
        self._data = None

    def __getstate__(self):
        return {"opener": self.opener, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["opener"], state["shape"], state["dtype"])

    def __getitem__(self, key):
        if self._data is None:
            from stemae.data.prepare import prepare

            kw = dict(self.opener)
            steps = kw.pop("prepare", None)
            cube = read_datacube(**kw)
            self._data = (prepare(cube, **steps) if steps is not None else cube).data
        return self._data[key]


def lazy(cube: Datacube):
    """``cube.data`` as something a Dask worker can be sent: a
    :class:`Reopened` view of its file, or the data itself when it was made
    in memory (NumPy and Dask arrays pickle as they are)."""
    if cube.opener is None:
        return cube.data
    return Reopened(cube.opener, cube.data.shape, cube.data.dtype)


def _pattern_chunks(data) -> tuple[int, ...]:
    """On-disk chunks: part of one scan row, whole patterns, about 16 MB."""
    per_pattern = int(np.prod(data.shape[2:])) * np.dtype(data.dtype).itemsize
    cols = int(max(1, min(data.shape[1], 16 * 2**20 // per_pattern)))
    return (1, cols) + tuple(data.shape[2:])


def write_datacube(path, data, calibration: Calibration | None = None, groups: dict | None = None) -> Path:
    """Write a datacube (and optional named groups of arrays) to HDF5, zarr or .npy.

    Parameters
    ----------
    path : str or Path
        ``.h5``/``.hdf5`` (dataset ``data``), ``.zarr`` (array ``data``) or
        ``.npy`` (the array only; ``groups`` are refused).
    data : ndarray, shape (Ry, Rx, Qy, Qx)
    calibration : Calibration, optional
        Stored as attributes of ``data``.
    groups : dict of {name: {array name: ndarray}}, optional
        Extra arrays, such as a simulator's ``truth``.

    The file appears only once fully written: an existing file at ``path``
    is replaced atomically, never left half-written.
    """
    path = Path(path)
    attrs = (calibration or Calibration()).to_attrs()
    groups = groups or {}
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            if groups:
                raise InputError(f"{path}: .npy holds one array; write .h5 or .zarr to keep the ground truth")
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(data))
        elif suffix in HDF5_SUFFIXES:
            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset("data", data=data, chunks=_pattern_chunks(data))
                ds.attrs.update(attrs)
                for gname, arrays in groups.items():
                    g = f.create_group(gname)
                    for k, v in arrays.items():
                        g.create_dataset(k, data=v)
        elif suffix == ".zarr":
            import zarr

            root = zarr.open_group(str(tmp), mode="w")
            arr = root.create_array("data", shape=data.shape, dtype=data.dtype, chunks=_pattern_chunks(data))
            arr[...] = data
            arr.attrs.update(attrs)
            for gname, arrays in groups.items():
                g = root.create_group(gname)
                for k, v in arrays.items():
                    g.create_array(k, shape=v.shape, dtype=v.dtype)[...] = v
        else:
            raise InputError(f"{path}: cannot write {suffix!r}; use .h5, .zarr or .npy")
    return path
