"""Results for other tools: HyperSpy signal files (``.hspy``, written with
RosettaSciIO; HyperSpy, pyxem and exspy open them) with calibrated scan
axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemae.data.results import atomic_path, read_results
from stemae.errors import InputError

#: The strain components of a strain store, in the order pyxem's strain maps use.
STRAIN_COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")


def scan_axes(calibration: dict, shape: tuple[int, int]) -> list[dict]:
    """HyperSpy axis dictionaries of a scan ``(Ry, Rx)``: ``y`` then ``x``,
    scaled by the scan step where the calibration has it (else pixels)."""
    step = calibration.get("r_pixel_size")
    units = calibration.get("r_units") if step else "px"
    return [{"name": name, "size": int(n), "offset": 0.0, "scale": float(step or 1.0), "units": units,
             "navigate": False} for name, n in zip(("y", "x"), shape)]


def signal(maps: list[np.ndarray], names: list[str], units: list[str], calibration: dict, title: str,
           source: str) -> dict:
    """A RosettaSciIO signal dictionary: a stack of scan maps ``(N, Ry, Rx)``
    whose first axis (navigation, ``component``) runs over ``names``."""
    data = np.stack([np.asarray(m, np.float32) for m in maps])
    axes = [{"name": "component", "size": len(maps), "offset": 0.0, "scale": 1.0, "units": "", "navigate": True},
            *scan_axes(calibration, data.shape[1:])]
    metadata = {"General": {"title": title, "original_filename": source},
                "Signal": {"signal_type": "", "quantity": ", ".join(f"{n} ({u})" for n, u in zip(names, units))}}
    return {"data": data, "axes": axes, "metadata": metadata,
            "original_metadata": {"stemae": {"components": list(names), "units": list(units)}},
            # What RosettaSciIO's writer expects of a signal besides its data.
            "tmp_parameters": {}, "attributes": {"_lazy": False, "ragged": False}, "learning_results": {},
            "models": {}, "package_info": {"package": "", "package_version": ""}}


def export_hyperspy(store, out_dir=None) -> list[Path]:
    """Write a strain store's maps as HyperSpy signals.

    Parameters
    ----------
    store : a ``strain.zarr`` results store
    out_dir : folder for the files (default: the store's folder)

    Returns
    -------
    paths of ``strain.hspy`` (e_xx, e_yy, e_xy, theta; invalid positions
    NaN) and, where the store has uncertainties, ``strain_sigma.hspy``
    """
    from rsciio.hspy import file_writer

    arrays, attrs = read_results(store)
    if not all(k in arrays for k in STRAIN_COMPONENTS):
        raise InputError(f"{store}: not a strain results store (no {', '.join(STRAIN_COMPONENTS)})")
    out_dir = Path(out_dir) if out_dir is not None else Path(store).parent
    cal = attrs.get("calibration", {})
    units = [attrs["arrays"][k]["units"] for k in STRAIN_COMPONENTS]
    valid = arrays["valid"]
    files = {"strain.hspy": (list(STRAIN_COMPONENTS), "strain ({})".format(attrs["method"]))}
    if all(f"sigma_{k}" in arrays for k in STRAIN_COMPONENTS):
        files["strain_sigma.hspy"] = ([f"sigma_{k}" for k in STRAIN_COMPONENTS],
                                      "strain standard deviation ({})".format(attrs["method"]))
    paths = []
    for name, (keys, title) in files.items():
        maps = [np.where(valid, arrays[k], np.nan) for k in keys]
        with atomic_path(out_dir / name) as tmp:
            file_writer(str(tmp), signal(maps, keys, units, cal, title, attrs.get("source", "")),
                        show_progressbar=False)
        paths.append(out_dir / name)
    return paths
