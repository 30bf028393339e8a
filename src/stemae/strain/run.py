"""Run a strain mapping on a datacube and write its results store and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemae import __version__
from stemae.data import Datacube, write_results
from stemae.geometry import CONVENTIONS, reference_mask
from stemae.strain.classical import map_strain
from stemae.viz import plot_lattice, plot_strain_maps

ARRAY_INFO = {
    "e_xx": ("1", "normal strain along x, U_xx - 1"),
    "e_yy": ("1", "normal strain along y, U_yy - 1"),
    "e_xy": ("1", "shear strain (tensor), U_xy"),
    "theta": ("deg", "lattice rotation, positive from +x towards +y"),
    "valid": ("", "lattice fit succeeded and passed the residual check"),
    "g1": ("px", "first reciprocal basis vector (x, y) in detector pixels"),
    "g2": ("px", "second reciprocal basis vector (x, y) in detector pixels"),
    "origin": ("px", "central-beam position (x, y) in detector pixels"),
    "n_disks": ("count", "Bragg disks used in the lattice fit besides the central beam"),
    "rms": ("px", "weighted RMS residual of the lattice fit"),
    "com": ("px", "whole-pattern centre of mass (x, y) in detector pixels"),
    "reference": ("", "reference region (unstrained lattice)"),
}


def run_strain(datacube: Datacube, out_dir, *, method: str = "xcorr", reference=None, progress: bool = False) -> dict:
    """Map strain, then write ``out_dir/strain.zarr`` and PNG figures.

    Parameters
    ----------
    datacube : Datacube
    out_dir : directory for ``strain.zarr``, ``strain_maps.png`` and
        ``reference_lattice.png``
    method : ``"xcorr"`` or ``"com"``
    reference : None, bool mask (Ry, Rx) or ((r0, r1), (c0, c1))
    progress : bool

    Returns
    -------
    The result dict of :func:`stemae.strain.classical.map_strain`.
    """
    out_dir = Path(out_dir)
    res = map_strain(datacube.data, method=method, reference=reference, progress=progress)
    mask = reference_mask(datacube.scan_shape, reference)
    arrays = {k: (res[k], *ARRAY_INFO[k]) for k in ARRAY_INFO if k in res}
    arrays["reference"] = (mask, *ARRAY_INFO["reference"])
    attrs = {
        "conventions": CONVENTIONS,
        "method": method,
        "reference_basis_px": res["g_ref"],
        "disk_radius_px": res["radius"],
        "calibration": datacube.calibration.to_attrs(),
        "source": datacube.source,
        "scan_shape": list(datacube.scan_shape),
        "pattern_shape": list(datacube.pattern_shape),
        "stemae_version": __version__,
    }
    write_results(out_dir / "strain.zarr", arrays, attrs)
    plot_strain_maps(res, out_dir / "strain_maps.png", res["valid"], title=f"strain ({method})")
    r, c = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    G = np.stack([res["g1"][r, c], res["g2"][r, c]], 1)
    if np.isfinite(G).all():
        pattern = np.asarray(datacube.data[r, c], dtype=np.float32)
        plot_lattice(pattern, res["origin"][r, c], G, res["radius"], out_dir / "reference_lattice.png",
                     title=f"lattice fit at scan ({r}, {c})")
    return res
