"""Calibration metadata of a datacube, and the physical units it gives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from stemae.errors import InputError

#: Spellings of reciprocal angstrom and of milliradian accepted as ``q_units``.
INVERSE_ANGSTROM = ("1/A", "1/Å", "A^-1", "Å^-1", "1/angstrom")
MILLIRADIAN = ("mrad",)


def electron_wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength in angstrom for a beam energy in keV."""
    v = energy_kev * 1e3
    return 12.264259 / np.sqrt(v * (1 + 0.978476e-6 * v))


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

    def inverse_angstrom_per_pixel(self) -> float | None:
        """The detector pixel in reciprocal angstrom: ``q_pixel_size`` in
        1/A, or in mrad converted with the beam energy's wavelength; None
        when not known.

        Raises
        ------
        InputError
            mrad without a beam energy, or units it does not know.
        """
        if self.q_pixel_size is None:
            return None
        units = (self.q_units or "").strip()
        if units in INVERSE_ANGSTROM:
            return float(self.q_pixel_size)
        if units in MILLIRADIAN:
            if not self.beam_energy_kev:
                raise InputError("a detector pixel size in mrad needs the beam energy (--energy KEV) to become 1/A")
            return float(self.q_pixel_size) * 1e-3 / electron_wavelength(self.beam_energy_kev)
        raise InputError(f"unknown detector pixel units {self.q_units!r}; use 1/A or mrad")

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


def lattice_in_angstrom(G: np.ndarray, q_per_px: float) -> dict:
    """A reciprocal basis in detector pixels described in physical units.

    Parameters
    ----------
    G : (2, 2) reciprocal basis, columns ``g1``, ``g2`` ``(x, y)`` in px
    q_per_px : detector pixel size, 1/A

    Returns
    -------
    dict: ``g1_inv_A``, ``g2_inv_A`` (the vectors, 1/A), ``d1_A``, ``d2_A``
    (the spacings of those planes, A), ``a_A``, ``b_A`` (the real-space
    basis lengths, A: the lattice parameters for a primitive basis) and
    ``gamma_deg`` (the angle between them)
    """
    Gq = np.asarray(G, np.float64) * q_per_px
    A = np.linalg.inv(Gq).T  # columns a1, a2 with a_i . g_j = delta_ij
    a, b = np.linalg.norm(A, axis=0)
    gamma = np.degrees(np.arccos(np.clip(A[:, 0] @ A[:, 1] / (a * b), -1, 1)))
    g1, g2 = Gq[:, 0], Gq[:, 1]
    return {"g1_inv_A": g1.tolist(), "g2_inv_A": g2.tolist(), "d1_A": float(1 / np.linalg.norm(g1)),
            "d2_A": float(1 / np.linalg.norm(g2)), "a_A": float(a), "b_A": float(b), "gamma_deg": float(gamma)}
