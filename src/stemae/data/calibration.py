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
    ellipse_ratio, ellipse_angle_deg : float
        Elliptical distortion of the detector: a circle of reciprocal space
        shows as an ellipse whose major over minor axis is ``ellipse_ratio``,
        the major axis at ``ellipse_angle_deg`` from detector ``+x`` towards
        ``+y`` (:func:`fit_ring_ellipse` measures them on a ring).
    """

    r_pixel_size: float | None = None
    r_units: str | None = None
    q_pixel_size: float | None = None
    q_units: str | None = None
    beam_energy_kev: float | None = None
    convergence_semiangle_mrad: float | None = None
    ellipse_ratio: float | None = None
    ellipse_angle_deg: float | None = None

    def undistortion(self) -> np.ndarray:
        """The ``(2, 2)`` map taking detector vectors ``(x, y)`` to what an
        undistorted detector would show (area-preserving; the identity
        without an ellipse)."""
        if not self.ellipse_ratio:
            return np.eye(2)
        return np.linalg.inv(ellipse_matrix(self.ellipse_ratio, self.ellipse_angle_deg or 0.0))

    def to_attrs(self) -> dict:
        """JSON-ready dict of the known fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def lattice(self, G: np.ndarray) -> dict | None:
        """:func:`lattice_in_angstrom` of a basis ``(2, 2)`` in detector
        pixels, the elliptical distortion removed; None without a detector
        calibration."""
        q = self.inverse_angstrom_per_pixel()
        return lattice_in_angstrom(self.undistortion() @ np.asarray(G, np.float64), q) if q else None

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


def ellipse_matrix(ratio: float, angle_deg: float) -> np.ndarray:
    """The area-preserving ``(2, 2)`` distortion that turns a circle into an
    ellipse of axis ratio ``ratio`` with its major axis at ``angle_deg``."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag([np.sqrt(ratio), 1 / np.sqrt(ratio)]) @ R.T


def fit_ring_ellipse(image: np.ndarray, radii: tuple[float, float], center=None, n_angles: int = 180
                     ) -> tuple[float, float, np.ndarray]:
    """Elliptical distortion measured on a ring (a polycrystalline or
    amorphous calibration sample's mean pattern, or a Bragg vector map).

    Along each of ``n_angles`` directions from ``center`` the ring's peak
    radius between ``radii`` is found (0.25 px samples, refined by a
    parabola); the points are fitted by least squares with the conic
    ``x' Q x = 1`` about the centre, whose eigenvectors are the axes.

    Parameters
    ----------
    image : (Qy, Qx)
    radii : (inner, outer) px, bracketing one ring
    center : (x, y) px, or None for the image's brightest spot (the central
        beam: the centroid of the smoothed image above half its maximum)

    Returns
    -------
    ratio : major over minor axis (at least 1)
    angle_deg : major axis from ``+x`` towards ``+y``, in [-90, 90)
    center : (x, y) used
    """
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    if center is None:
        smooth = ndimage.gaussian_filter(img, 2)
        yy, xx = np.nonzero(smooth >= 0.5 * smooth.max())
        w = smooth[yy, xx]
        center = np.array([np.sum(xx * w), np.sum(yy * w)]) / w.sum()
    center = np.asarray(center, np.float64)
    r = np.arange(radii[0], radii[1], 0.25)
    phi = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    x = center[0] + r[None, :] * np.cos(phi)[:, None]
    y = center[1] + r[None, :] * np.sin(phi)[:, None]
    profile = ndimage.map_coordinates(ndimage.gaussian_filter(img, 1), [y, x], order=1)
    i = np.clip(profile.argmax(1), 1, len(r) - 2)
    a, b, c = (profile[np.arange(n_angles), i + d] for d in (-1, 0, 1))
    shift = np.where(a - 2 * b + c < 0, 0.5 * (a - c) / (a - 2 * b + c), 0.0)
    peak = r[i] + 0.25 * np.clip(shift, -1, 1)
    px, py = peak * np.cos(phi), peak * np.sin(phi)
    q, *_ = np.linalg.lstsq(np.stack([px * px, 2 * px * py, py * py], 1), np.ones(n_angles), rcond=None)
    vals, vecs = np.linalg.eigh(np.array([[q[0], q[1]], [q[1], q[2]]]))
    if (vals <= 0).any():
        raise InputError("no ring between the radii given: the fitted curve is not an ellipse")
    major = vecs[:, 0]  # the smaller eigenvalue belongs to the longer axis
    angle = (np.degrees(np.arctan2(major[1], major[0])) + 90) % 180 - 90
    return float(np.sqrt(vals[1] / vals[0])), float(angle), center


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
