"""Calibration metadata of a datacube."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class Calibration:
    """Physical calibration of a 4D-STEM datacube; ``None`` where unknown.

    Attributes
    ----------
    r_pixel_size : float
        Scan step, in ``r_units`` (typically nm).
    r_units : str
    q_pixel_size : float
        Detector pixel size in reciprocal space, in ``q_units`` (1/A or mrad).
    q_units : str
    beam_energy_kev : float
        Beam energy in keV.
    convergence_semiangle_mrad : float
        Probe convergence semi-angle in mrad.
    """

    r_pixel_size: float | None = None
    r_units: str | None = None
    q_pixel_size: float | None = None
    q_units: str | None = None
    beam_energy_kev: float | None = None
    convergence_semiangle_mrad: float | None = None

    def to_attrs(self) -> dict:
        """JSON-ready dict of the known fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_attrs(cls, attrs) -> "Calibration":
        """Build from a mapping (HDF5/zarr attributes); unknown keys are ignored."""
        out = {}
        for f in fields(cls):
            if f.name in attrs:
                v = attrs[f.name]
                v = v.decode() if isinstance(v, bytes) else v
                out[f.name] = str(v) if f.name.endswith("units") else float(v)
        return cls(**out)
