"""Multislice 4D-STEM of a user's own crystal through abTEM (extra ``abtem``).

For physically exact patterns (dynamical scattering, thickness effects,
real probe) of an ASE ``Atoms`` model: strain the atoms yourself to know the
truth, simulate here, and map the result with stemae.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stemae.data.calibration import Calibration


def simulate_multislice(
    atoms,
    scan_shape: tuple[int, int],
    scan_step: float,
    *,
    start: tuple[float, float] | None = None,
    energy_kev: float = 300.0,
    convergence_mrad: float = 1.5,
    pattern_shape: tuple[int, int] | None = None,
    q_pixel_size: float | None = None,
    sampling: float = 0.05,
    slice_thickness: float = 1.0,
    dose: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, Calibration]:
    """Simulate a 4D-STEM datacube of ``atoms`` by multislice (abTEM).

    Parameters
    ----------
    atoms : ase.Atoms
        The specimen; its cell must be orthogonal (see
        ``abtem.orthogonalize_cell``) and large enough to hold the probe.
    scan_shape : (Ry, Rx)
    scan_step : float
        Scan step in angstrom.
    start : (x, y), optional
        First probe position in angstrom; default centres the scan in the cell.
    energy_kev, convergence_mrad : float
        Beam energy (keV) and probe convergence semi-angle (mrad).
    pattern_shape : (Qy, Qx), optional
        Detector size; default abTEM's own grid up to its anti-aliasing limit.
    q_pixel_size : float, optional
        Detector pixel size in 1/angstrom; default abTEM's (coarser) sampling.
        Patterns are resampled onto this grid, conserving intensity.
    sampling : float
        Real-space sampling of the potential in angstrom.
    slice_thickness : float
        Multislice slice thickness in angstrom.
    dose : float, optional
        Electrons per pattern for Poisson noise; ``None`` for expected values.
    seed : int

    Returns
    -------
    data : ndarray (Ry, Rx, Qy, Qx), float32
    calibration : Calibration
    """
    import abtem

    Ry, Rx = scan_shape
    cell = np.diag(np.asarray(atoms.cell))[:2]
    if start is None:
        start = (cell[0] / 2 - scan_step * (Rx - 1) / 2, cell[1] / 2 - scan_step * (Ry - 1) / 2)
    yy, xx = np.mgrid[0:Ry, 0:Rx]
    positions = np.stack([start[0] + xx.ravel() * scan_step, start[1] + yy.ravel() * scan_step], 1)
    potential = abtem.Potential(atoms, sampling=sampling, slice_thickness=slice_thickness, projection="infinite")
    probe = abtem.Probe(energy=energy_kev * 1e3, semiangle_cutoff=convergence_mrad)
    measured = probe.scan(
        potential=potential, scan=abtem.CustomScan(positions), detectors=abtem.PixelatedDetector(max_angle="valid")
    ).compute(progress_bar=False)
    native = np.swapaxes(np.asarray(measured.array), -1, -2)  # abTEM is x-first: rows are y here
    dky, dkx = measured.sampling[1], measured.sampling[0]
    n_y, n_x = native.shape[-2:]
    q_px = float(max(dkx, dky) if q_pixel_size is None else q_pixel_size)
    Qy, Qx = pattern_shape if pattern_shape is not None else (int(n_y * dky / q_px), int(n_x * dkx / q_px))
    iy, ix = np.mgrid[0:Qy, 0:Qx].astype(np.float64)
    coords = np.stack([(iy - Qy // 2) * q_px / dky + n_y // 2, (ix - Qx // 2) * q_px / dkx + n_x // 2])
    scale = q_px * q_px / (dkx * dky)
    data = np.stack(
        [ndimage.map_coordinates(p, coords, order=1, mode="constant") * scale for p in native]
    ).astype(np.float32)
    if dose is not None:
        data = np.random.default_rng(seed).poisson(np.clip(data, 0, None) * dose).astype(np.float32)
    calibration = Calibration(
        r_pixel_size=scan_step / 10.0,
        r_units="nm",
        q_pixel_size=q_px,
        q_units="1/A",
        beam_energy_kev=energy_kev,
        convergence_semiangle_mrad=convergence_mrad,
    )
    return data.reshape(Ry, Rx, Qy, Qx), calibration
