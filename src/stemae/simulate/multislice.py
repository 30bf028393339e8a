"""Multislice 4D-STEM through abTEM (extra ``abtem``): independent physics.

:func:`simulate_multislice` runs abTEM on any ASE ``Atoms`` model and puts
the far-field patterns on a detector of your choice (pixel-integrated, with
descan, diffuse background and Poisson dose as options).
:func:`monolayer_heterostructure` and :func:`monolayer_polycrystal` build
strained WS2/WSe2 monolayers with a known displacement field and return the
patterns with the true local lattice at every probe position, for checking
strain maps on physics the built-in simulator does not share: weak Bragg
disks (about 97 % of the electrons stay in the central disk), dynamical
intensities, the real probe.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, spatial, special

from stemae.data.calibration import Calibration
from stemae.geometry import rotation_matrix, strain_from_deformation
from stemae.simulate.diffraction import (
    WS2,
    WSE2,
    SimulatedDatacube,
    descan_origins,
    detector_counts,
    electron_wavelength,
)

WS2_A, WSE2_A = 3.153, 3.282  # lattice constants, angstrom
MONOLAYER_DEFAULTS = dict(energy_kev=80.0, convergence_mrad=3.0, pattern_shape=(193, 193), q_pixel_size=0.0104)


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
    center: tuple[float, float] | None = None,
    descan: float = 0.0,
    background: float = 0.0,
    background_width: float = 0.2,
    dose: float | None = None,
    sampling: float = 0.05,
    slice_thickness: float = 1.0,
    oversample: int = 3,
    batch: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, Calibration]:
    """Simulate a 4D-STEM datacube of ``atoms`` by multislice (abTEM).

    Each far-field pattern is integrated over the detector pixels
    (``oversample`` x ``oversample`` samples of abTEM's pattern per pixel),
    centred at ``center`` plus the descan drift, then a diffuse background
    and Poisson noise are applied as in :func:`stemae.simulate.simulate_datacube`.

    Parameters
    ----------
    atoms : ase.Atoms
        The specimen; its cell must be orthogonal (see
        ``abtem.orthogonalize_cell``) and large enough to hold the probe.
        Make it larger than ``1 / q_pixel_size`` so that abTEM's own
        reciprocal sampling is finer than the detector's.
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
        Detector pixel size in 1/angstrom; default abTEM's sampling.
    center : (x, y), optional
        Central-beam position in detector pixels at the scan centre; default
        ``(Qx // 2, Qy // 2)``.
    descan : float
        Drift of the pattern centre across the scan in pixels (``descan``
        along x over the columns, half that along y over the rows).
    background : float
        Fraction of the electrons in a diffuse Lorentzian background.
    background_width : float
        Its half width at half maximum in 1/angstrom.
    dose : float, optional
        Electrons per pattern for Poisson noise; ``None`` for expected
        values (each pattern then sums to about 1).
    sampling, slice_thickness : float
        Real-space sampling of the potential and slice thickness, angstrom.
    oversample : int
        Samples per detector pixel side for the pixel integration.
    batch : int
        Probe positions per abTEM call (memory only).
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
    potential = abtem.Potential(atoms, sampling=sampling, slice_thickness=slice_thickness,
                                projection="infinite").build().compute(progress_bar=False)
    probe = abtem.Probe(energy=energy_kev * 1e3, semiangle_cutoff=convergence_mrad)
    detector = abtem.PixelatedDetector(max_angle="valid")
    dk = None
    native = []
    for i in range(0, len(positions), batch):
        m = probe.scan(potential=potential, scan=abtem.CustomScan(positions[i : i + batch]),
                       detectors=detector).compute(progress_bar=False)
        native.append(np.swapaxes(np.asarray(m.array, dtype=np.float32), -1, -2))  # abTEM is x-first
        dk = (m.sampling[0], m.sampling[1])
    native = np.concatenate(native)
    dkx, dky = dk
    n_y, n_x = native.shape[-2:]
    q_px = float(max(dkx, dky) if q_pixel_size is None else q_pixel_size)
    Qy, Qx = pattern_shape if pattern_shape is not None else (int(n_y * dky / q_px), int(n_x * dkx / q_px))
    if center is None:
        center = (Qx // 2, Qy // 2)
    origins = descan_origins(scan_shape, center, descan).reshape(-1, 2)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    iy, ix = np.mgrid[0:Qy, 0:Qx].astype(np.float64)
    data = np.empty((Ry * Rx, Qy, Qx), dtype=np.float32)
    for p, (pattern, o) in enumerate(zip(native, origins)):
        acc = np.zeros((Qy, Qx))
        for sy in sub:
            for sx in sub:
                coords = np.stack([(iy + sy - o[1]) * q_px / dky + n_y // 2, (ix + sx - o[0]) * q_px / dkx + n_x // 2])
                acc += ndimage.map_coordinates(pattern, coords, order=1, mode="constant")
        data[p] = acc
    rng = np.random.default_rng(seed)
    width = background_width / q_px
    for i in range(0, len(data), batch):
        data[i : i + batch] = detector_counts(data[i : i + batch], origins[i : i + batch], background, width, dose, rng)
    calibration = Calibration(
        r_pixel_size=scan_step / 10.0,
        r_units="nm",
        q_pixel_size=q_px,
        q_units="1/A",
        beam_energy_kev=energy_kev,
        convergence_semiangle_mrad=convergence_mrad,
    )
    return data.reshape(Ry, Rx, Qy, Qx), calibration


def _bump(points: np.ndarray, M, center, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Displacement ``u = M (x - c) exp(-|x - c|^2 / 2 w^2)`` and its gradient
    at ``points`` (N, 2): ``M`` sets the strain at the centre (a rotation,
    dilation or shear), ``w`` its reach. Returns u (N, 2) and grad u (N, 2, 2)."""
    M = np.asarray(M, dtype=np.float64)
    d = points - np.asarray(center)
    g = np.exp(-(d**2).sum(-1) / (2 * width**2))
    Md = d @ M.T
    u = Md * g[:, None]
    grad = g[:, None, None] * (M[None] - Md[:, :, None] * d[:, None, :] / width**2)
    return u, grad


class _Field:
    """A smooth displacement field: a sum of bumps plus an optional
    isotropic expansion ``(1 + f)`` to the right of ``x = x_i`` (a lateral
    interface of width ``w``, the expansion centred on ``y = y_c``; the
    lattice bends within a few ``w`` of the interface to stay continuous).
    Coordinates are angstrom, reference frame."""

    def __init__(self, bumps, expansion: float = 0.0, x_i: float = 0.0, y_c: float = 0.0, width: float = 1.0):
        self.bumps, self.f, self.x_i, self.y_c, self.w = bumps, expansion, x_i, y_c, width

    def __call__(self, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.zeros_like(xi)
        grad = np.zeros(xi.shape[:1] + (2, 2))
        for b in self.bumps:
            du, dg = _bump(xi, *b)
            u += du
            grad += dg
        if self.f:
            s = (xi[:, 0] - self.x_i) / self.w
            step = special.expit(s)
            dy = xi[:, 1] - self.y_c
            u[:, 0] += self.f * self.w * np.logaddexp(0.0, s)
            u[:, 1] += self.f * step * dy
            grad[:, 0, 0] += self.f * step
            grad[:, 1, 1] += self.f * step
            grad[:, 1, 0] += self.f * step * (1 - step) / self.w * dy
        return u, grad

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Reference coordinates ``xi`` with ``xi + u(xi) = x``."""
        xi = x.copy()
        for _ in range(10):
            xi = x - self(xi)[0]
        return xi


def probe_averaged_deformation(field, positions: np.ndarray, extent, energy_kev: float, convergence_mrad: float,
                               region=None, own=None, sampling: float = 0.5) -> np.ndarray:
    """Deformation gradient of ``field`` averaged over the probe's intensity
    at each probe position, in the periodic cell abTEM simulates, over the
    position's own region (phase or grain) only.

    The intensity is abTEM's own probe (its soft-edged aperture on the
    cell's reciprocal grid, so the same tails: about 4 % of the electrons
    fall further than 20 A from the centre at 80 kV and 3 mrad, and they
    wrap around the cell as in the multislice). Another region's lattice,
    a few per cent off, puts faint disks of its own beside the position's
    rather than moving them, so it is left out of the average. The average
    is a periodic cross-correlation of the intensity with the deformation
    sampled every ``sampling`` angstrom over the cell, evaluated at each
    position from its Fourier series (the intensity is band-limited to
    twice the aperture).

    Parameters
    ----------
    field : callable, reference points (N, 2) -> (displacement (N, 2),
        its gradient (N, 2, 2)), with ``field.invert`` (see ``_Field``)
    positions : (P, 2) probe positions (x, y), angstrom
    extent : (2,) cell size (x, y), angstrom
    energy_kev, convergence_mrad : probe energy and convergence semi-angle
    region : callable, reference points (N, 2) -> region label (N,) int;
        ``None``: one region
    own : (P,) int, each position's region label (with ``region``)

    Returns
    -------
    F : (P, 2, 2) averaged deformation gradient ``I + grad u``
    """
    import abtem

    probe = abtem.Probe(energy=energy_kev * 1e3, semiangle_cutoff=convergence_mrad, extent=tuple(map(float, extent)),
                        sampling=sampling)
    waves = probe.build(scan=abtem.CustomScan(np.zeros((1, 2)))).compute(progress_bar=False)
    intensity = (np.abs(np.asarray(waves.array)) ** 2).reshape(waves.array.shape[-2:])  # (nx, ny), x first
    nx, ny = intensity.shape
    dx, dy = waves.sampling
    gx, gy = np.meshgrid(np.arange(nx) * dx, np.arange(ny) * dy, indexing="ij")
    xi = field.invert(np.stack([gx.ravel(), gy.ravel()], 1))
    F = (np.eye(2) + field(xi)[1]).reshape(nx, ny, 4)
    labels = np.zeros((nx, ny), int) if region is None else np.asarray(region(xi)).reshape(nx, ny)
    own = np.zeros(len(positions), int) if region is None else np.asarray(own)
    positions = np.asarray(positions, np.float64)
    spectrum = np.conj(np.fft.fft2(intensity))
    keep = np.abs(spectrum) > 1e-9 * np.abs(spectrum).max()
    kx, ky = np.meshgrid(np.fft.fftfreq(nx, dx), np.fft.fftfreq(ny, dy), indexing="ij")
    k = np.stack([kx[keep], ky[keep]], 1)
    out = np.full((len(positions), 4), np.nan)
    for label in np.unique(own):
        inside = (labels == label)[..., None]
        coef = (spectrum[..., None] * np.fft.fft2(np.concatenate([F * inside, inside], -1), axes=(0, 1)))[keep]
        where = np.nonzero(own == label)[0]
        for i in range(0, len(where), 64):
            at = where[i : i + 64]
            sums = (np.exp(2j * np.pi * (positions[at] @ k.T)) @ coef).real  # (p, 5)
            out[at] = sums[:, :4] / sums[:, 4:]
    return out.reshape(-1, 2, 2)


def _sheet(chalcogen: str, a: float, orientation: float, center, half: float):
    """Sites of a 2H MX2 monolayer (W and two chalcogens per cell) rotated by
    ``orientation`` degrees about ``center`` and covering a square of half
    side ``half`` (angstrom). Returns positions (N, 3) and symbols (N,)."""
    import ase.build

    unit = ase.build.mx2(f"W{chalcogen}2", kind="2H", a=a, size=(1, 1, 1), vacuum=2.0)
    basis = np.asarray(unit.cell)[:2, :2]  # rows a1, a2
    n = int(np.ceil(1.5 * half / a)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    cells = np.stack([i.ravel(), j.ravel()], 1) @ basis
    R = rotation_matrix(np.radians(orientation))
    pos = (cells[:, None, :] + unit.positions[None, :, :2]).reshape(-1, 2) @ R.T + np.asarray(center)
    z = np.tile(unit.positions[:, 2], len(cells))
    sym = np.tile(np.array(unit.get_chemical_symbols()), len(cells))
    keep = (np.abs(pos - np.asarray(center)) <= half).all(1)
    return np.column_stack([pos[keep], z[keep]]), sym[keep]


def _reciprocal(a: float, orientation: float) -> np.ndarray:
    """Reciprocal basis (2, 2), 1/angstrom, columns g1, g2, of a hexagonal
    lattice ``a`` rotated by ``orientation`` degrees (ASE's a1 along +x)."""
    real = np.array([[a, -a / 2], [0.0, a * np.sqrt(3) / 2]])
    return rotation_matrix(np.radians(orientation)) @ np.linalg.inv(real).T


def _monolayer(scan_shape, scan_step, grains, field, phase_of, *, margin, dose, background, descan, seed,
               sampling, **optics) -> SimulatedDatacube:
    """Shared body of the monolayer builders: atoms from ``grains`` (list of
    (chalcogen-by-position function, a, orientation, region function)),
    displaced by ``field``; truth at every probe position."""
    from ase import Atoms

    Ry, Rx = scan_shape
    opt = dict(MONOLAYER_DEFAULTS, **optics)
    ext = np.array([(Rx - 1) * scan_step, (Ry - 1) * scan_step]) + 2 * margin
    origin_xy = np.full(2, margin)  # first probe position
    centre = ext / 2
    half = 0.75 * ext.max()
    pos, sym = [], []
    tree = None
    for k, (chalcogen_at, a, orient, region) in enumerate(grains):
        p, s = _sheet("S", a, orient, centre, half)
        keep = region(p[:, :2]) & (p[:, 0] >= 0) & (p[:, 0] < ext[0]) & (p[:, 1] >= 0) & (p[:, 1] < ext[1])
        p, s = p[keep], s[keep]
        s = np.where(s == "S", chalcogen_at(p[:, :2]), s)
        if tree is not None and len(p):  # grain boundaries: no two atoms closer than 1.2 A
            d, _ = tree.query(p[:, :2])
            p, s = p[d > 1.2], s[d > 1.2]
        pos.append(p)
        sym.append(s)
        tree = spatial.cKDTree(np.concatenate(pos)[:, :2])
    pos, sym = np.concatenate(pos), np.concatenate(sym)
    pos[:, :2] += field(pos[:, :2])[0]
    atoms = Atoms(symbols=list(sym), positions=pos, cell=[ext[0], ext[1], pos[:, 2].max() + 2.0], pbc=True)
    q_px = opt["q_pixel_size"]
    Qy, Qx = opt["pattern_shape"]
    center = (Qx // 2 + 0.37, Qy // 2 - 0.61)
    bg_width = 1.0 / (np.sqrt(3) * WS2_A)  # half the first-order spacing, as the built-in simulator
    data, cal = simulate_multislice(atoms, scan_shape, scan_step, start=tuple(origin_xy), center=center,
                                    descan=descan, background=background, background_width=bg_width,
                                    dose=dose, sampling=sampling, slice_thickness=pos[:, 2].max() + 2.0, seed=seed,
                                    **opt)
    # Truth at each probe position: the deformation of the reference sites
    # averaged over the probe's intensity (see :func:`probe_averaged_deformation`),
    # which is what the Bragg disks see where the lattice varies slowly;
    # ``boundary`` is the distance to the nearest other phase or grain (the
    # probe's tails see both lattices within about 15 A of a boundary), inf
    # beyond the 20 A searched.
    yy, xx = np.mgrid[0:Ry, 0:Rx]
    probe = origin_xy + np.stack([xx.ravel(), yy.ravel()], 1) * scan_step
    off = np.arange(-20.0, 20.01, 0.75)
    ox, oy = (v.ravel() for v in np.meshgrid(off, off))
    xi = field.invert((probe[:, None, :] + np.stack([ox, oy], 1)[None]).reshape(-1, 2))
    ph_pts, gr_pts = (a.reshape(len(probe), -1) for a in phase_of(xi))
    centre_idx = int(np.argmin(np.hypot(ox, oy)))
    phase, grain = ph_pts[:, centre_idx], gr_pts[:, centre_idx]
    other = (ph_pts != phase[:, None]) | (gr_pts != grain[:, None])
    boundary = np.where(other, np.hypot(ox, oy)[None], np.inf).min(1)
    label = lambda ph, gr: ph * len(grains) + gr  # noqa: E731
    F = probe_averaged_deformation(field, probe, ext, opt["energy_kev"], opt["convergence_mrad"],
                                   region=lambda xi: label(*phase_of(xi)), own=label(phase, grain))
    G = np.empty((len(probe), 2, 2))
    orientation = np.empty(len(probe))
    for k, (_, a, orient, _) in enumerate(grains):
        sel = grain == k
        G[sel] = np.swapaxes(np.linalg.inv(F[sel]), -1, -2) @ _reciprocal(a, orient) / q_px
        orientation[sel] = orient
    F_own = F.copy()
    F_own[phase == 1] *= WS2_A / WSE2_A  # WSe2 sits on expanded WS2 sites
    truth = {k: v.reshape(Ry, Rx).astype(np.float32) for k, v in strain_from_deformation(F_own).items()}
    truth.update(
        g1=G[:, :, 0].reshape(Ry, Rx, 2).astype(np.float32),
        g2=G[:, :, 1].reshape(Ry, Rx, 2).astype(np.float32),
        origin=descan_origins(scan_shape, center, descan).astype(np.float32),
        phase=phase.reshape(Ry, Rx).astype(np.int16),
        grain=grain.reshape(Ry, Rx).astype(np.int16),
        orientation=orientation.reshape(Ry, Rx).astype(np.float32),
        boundary=boundary.reshape(Ry, Rx).astype(np.float32),
    )
    radius = opt["convergence_mrad"] * 1e-3 / electron_wavelength(opt["energy_kev"]) / q_px
    params = dict(scan_step_A=scan_step, dose=dose, background=background, descan=descan, seed=seed,
                  disk_radius_px=float(radius), background_width_px=float(bg_width / q_px), n_atoms=len(atoms),
                  sampling=sampling, **opt)
    return SimulatedDatacube(data, truth, [WS2, WSE2], cal, float(radius), params)


def monolayer_heterostructure(
    scan_shape: tuple[int, int] = (24, 32),
    scan_step: float = 3.0,
    *,
    dose: float | None = 1e5,
    background: float = 0.3,
    descan: float = 0.0,
    seed: int = 0,
    sampling: float = 0.1,
    margin: float = 30.0,
    **optics,
) -> SimulatedDatacube:
    """A lateral WS2/WSe2 monolayer heterostructure by multislice.

    WS2 fills the left 45 % of the scan and WSe2 the rest, on one continuous
    lattice: across the straight interface (3 A wide) the lattice expands by
    the 4.1 % misfit in both directions, so WSe2 has its own lattice constant;
    to stay continuous the lattice bends within about 10 A of the interface,
    more so further from the scan's middle row. Smooth bumps add a rotation (0.6 degrees), a shear
    (3e-3), a dilation (2.5e-3, partly in the left-most columns) and a
    uniaxial strain (-3e-3). By default 80 kV, 3 mrad, 193x193 patterns of
    0.0104 1/A pixels: about 97 % of the electrons stay in the central disk
    and the sqrt(7) reflections are cut by the detector edge.

    Parameters
    ----------
    scan_shape : (Ry, Rx)
    scan_step : float
        Angstrom.
    dose, background, descan, seed
        As :func:`simulate_multislice` (background is Lorentzian, half width
        half the first-order spacing).
    sampling : float
        Potential sampling in angstrom (0.1 resolves the patterns to beyond
        2 1/A).
    margin : float
        Specimen beyond the scan on every side, angstrom; it also sets the
        cell size and so abTEM's reciprocal sampling (keep the cell larger
        than ``1 / q_pixel_size``).
    **optics
        ``energy_kev``, ``convergence_mrad``, ``pattern_shape``,
        ``q_pixel_size``.

    Returns
    -------
    SimulatedDatacube
        ``truth`` as :func:`stemae.simulate.simulate_datacube` (strain of
        each position relative to its own phase's unstrained lattice) plus
        ``grain``; ``phases`` [WS2, WSe2].
    """
    Ry, Rx = scan_shape
    W, H = (Rx - 1) * scan_step, (Ry - 1) * scan_step
    o = np.array([margin, margin])
    x_i = margin + 0.45 * W
    s = 30.0  # strain varies over tens of angstrom, several probe widths
    w = np.radians(0.6)
    bumps = [
        ([[0, -w], [w, 0]], o + (0.3 * W, 0.65 * H), s),
        ([[0, 3e-3], [3e-3, 0]], o + (0.7 * W, 0.3 * H), 0.8 * s),
        ([[2.5e-3, 0], [0, 2.5e-3]], o + (0.1 * W, 0.3 * H), 0.8 * s),
        ([[-3e-3, 0], [0, 0]], o + (0.75 * W, 0.8 * H), 0.8 * s),
    ]
    field = _Field(bumps, expansion=WSE2_A / WS2_A - 1, x_i=x_i, y_c=margin + 0.5 * H, width=3.0)
    se = lambda p: np.where(p[:, 0] > x_i, "Se", "S")  # noqa: E731
    grains = [(se, WS2_A, 0.0, lambda p: np.ones(len(p), bool))]
    phase_of = lambda xi: ((xi[:, 0] > x_i).astype(int), np.zeros(len(xi), int))  # noqa: E731
    return _monolayer(scan_shape, scan_step, grains, field, phase_of, margin=margin, dose=dose,
                      background=background, descan=descan, seed=seed, sampling=sampling, **optics)


def monolayer_polycrystal(
    scan_shape: tuple[int, int] = (32, 32),
    scan_step: float = 4.0,
    *,
    angles: tuple[float, ...] = (0.0, 8.5, 15.0, 22.5, 29.5),
    dose: float | None = 1e5,
    background: float = 0.3,
    descan: float = 0.0,
    seed: int = 0,
    sampling: float = 0.1,
    margin: float = 30.0,
    **optics,
) -> SimulatedDatacube:
    """A WS2 monolayer of Voronoi grains by multislice.

    One grain per entry of ``angles`` (in-plane orientation in degrees; the
    first grain holds the scan centre, so it is the natural reference),
    seeded at random (``seed``) over the scan, with a smooth strain field of
    a few 1e-3 (random bumps) on top. Atoms closer than 1.2 A across a grain
    boundary are dropped. Other parameters as :func:`monolayer_heterostructure`;
    ``truth['grain']`` holds the grain index.
    """
    Ry, Rx = scan_shape
    rng = np.random.default_rng([seed, 5])
    W, H = (Rx - 1) * scan_step, (Ry - 1) * scan_step
    o = np.array([margin, margin])
    n = len(angles)
    # Seeds: the first at the scan centre, the others spread around it.
    phi = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n - 1) / max(n - 1, 1)
    seeds = np.vstack([o + (W / 2, H / 2), o + (W / 2, H / 2) + 0.65 * np.stack([W * np.cos(phi), H * np.sin(phi)], 1)])
    owner = lambda p: spatial.cKDTree(seeds).query(p)[1]  # noqa: E731
    s = 30.0
    bumps = []
    for _ in range(5):
        d = rng.normal(0, 3e-3, 3)
        bumps.append(([[d[0], d[2]], [d[2], d[1]]], o + rng.uniform(0, 1, 2) * (W, H), s))
    w = np.radians(rng.normal(0, 0.3))
    bumps.append(([[0, -w], [w, 0]], o + rng.uniform(0, 1, 2) * (W, H), s))
    field = _Field(bumps)
    orient = 7.0
    grains = [(lambda p: np.full(len(p), "S"), WS2_A, orient + a, (lambda k: lambda p: owner(p) == k)(k))
              for k, a in enumerate(angles)]
    phase_of = lambda xi: (np.zeros(len(xi), int), owner(xi))  # noqa: E731
    return _monolayer(scan_shape, scan_step, grains, field, phase_of, margin=margin, dose=dose,
                      background=background, descan=descan, seed=seed, sampling=sampling, **optics)
