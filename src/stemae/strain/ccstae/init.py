"""Everything the CC-ST-AE starts from, measured on pooled data (:func:`initialise`)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from stemae.data.blocks import read_patterns
from stemae.geometry import (
    deformation_from_reciprocal,
    polar_decomposition,
    reciprocal_from_deformation,
    rotation_matrix,
)
from stemae.strain.ccstae.likelihood import fit_central_beam, fit_disk_lattice
from stemae.strain.ccstae.model import NOISE_FLOOR, SEARCH_TURN
from stemae.strain.disks import estimate_probe, find_disks
from stemae.strain.lattice import align_to_reference, fit_lattice
from stemae.strain.lattice import orientation_search as index_search
from stemae.strain.pooled import (
    aligned_sum,
    beam_centers,
    disk_basis,
    lattice_check,
    tile_positions,
    tile_size,
)
from stemae.strain.profiles import (
    DISK_DR,
    background_profile,
    disk_profile,
    fit_pseudo_voigt,
    ring_median_background,
    shell_profiles,
)

TURN_MARGIN = math.radians(3.0)  # orientation search reaches this beyond the training sample's spread
KEEP_INFORMATION = 0.995  # share of each base's strain information the kept reflections hold


def refine_bases(G: np.ndarray, bases: np.ndarray, rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Bases re-estimated from many lattices ``G`` (N, 2, 2): each lattice
    goes to the base it matches with least distortion, and each base becomes
    its members' median stretch and (with ``rotate``; leave it off for a
    sample of many orientations) mean rotation relative to it (robust to
    the odd failed fit). Returns bases (K, 2, 2) and classes (N,)."""
    dist = np.stack([np.linalg.norm(np.log(np.linalg.svd(align_to_reference(G, Gk) @ np.linalg.inv(Gk),
                                                           compute_uv=False)), axis=-1) for Gk in bases], 1)
    cls = dist.argmin(1)
    out = bases.copy()
    for k, Gk in enumerate(bases):
        members = align_to_reference(G[cls == k], Gk)
        if len(members) == 0:
            continue
        R, U = polar_decomposition(deformation_from_reciprocal(members, Gk))
        angle = np.arctan2(R[:, 1, 0], R[:, 0, 0]).mean() if rotate else 0.0
        out[k] = reciprocal_from_deformation(rotation_matrix(angle) @ np.median(U, axis=0), Gk)
    return out, cls


def _cluster_bases(G: np.ndarray, n_classes: int, seed: int):
    """Bases from many lattices ``G`` (N, 2, 2), one labelling: their
    *shapes* (each turned so that g1 lies along +x, so grains of one phase
    in other orientations fall together) clustered by k-means into
    ``n_classes`` groups, each base its members' median shape in the
    orientation of its most typical member; class 0 has the largest
    reciprocal cell. Returns bases (n_classes, 2, 2) and each lattice's
    class (N,)."""
    phi = np.arctan2(G[:, 1, 0], G[:, 0, 0])
    shapes = align_to_reference(rotation_matrix(-phi) @ G, rotation_matrix(-phi[0]) @ G[0])
    feats = shapes.reshape(len(G), 4)
    _, label = kmeans2(feats / (feats.std(0) + 1e-12), n_classes, minit="++", seed=seed)
    bases = []
    for j in range(n_classes):
        members = np.flatnonzero(label == j) if (label == j).any() else np.arange(len(G))
        shape = np.median(feats[members], axis=0)
        typical = members[np.argmin(np.abs(feats[members] - shape).sum(1))]
        bases.append(rotation_matrix(phi[typical]) @ shape.reshape(2, 2))
    bases = np.array(bases)
    order = np.argsort(-np.abs(np.linalg.det(bases)))
    return bases[order], np.argsort(order)[label]


def _reflection_indices(G: np.ndarray, center, shape, radius: float) -> np.ndarray:
    """Indices (J, 2) of reflections whose disks reach the detector (centre
    at most half a radius off it) for some base in ``G`` (K, 2, 2) at up to
    3 % strain; the fits drop those that fall off per pattern."""
    Qy, Qx = shape
    gmin = np.linalg.norm(G, axis=1).min()
    n = int(np.ceil(max(Qy, Qx) / gmin)) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    hk = hk[(hk != 0).any(1)]
    ok = np.zeros(len(hk), bool)
    m = 0.5 * radius
    for Gk in G:
        for f in (0.97, 1.0, 1.03):
            p = np.asarray(center) + f * hk @ Gk.T
            ok |= (p[:, 0] > -m) & (p[:, 0] < Qx - 1 + m) & (p[:, 1] > -m) & (p[:, 1] < Qy - 1 + m)
    return hk[ok]


def _informative(information: np.ndarray, classes: np.ndarray, n_classes: int,
                 keep: float = KEEP_INFORMATION) -> np.ndarray:
    """Reflections (J,) bool worth fitting: for every base, the fewest that
    hold a share ``keep`` of its patterns' information on the transform.

    ``information`` (N, J) each pattern's per-disk information
    (``disk_information`` of :func:`~stemae.strain.ccstae.likelihood.fit_disk_lattice`,
    0 where a disk is off the detector); ``classes`` (N,) base of each
    pattern. Faint reflections cost as much to fit as bright ones and add
    almost nothing (their loss widens the errors by ``1 / sqrt(keep)`` at
    most).
    """
    chosen = np.zeros(information.shape[1], bool)
    for k in range(n_classes):
        total = np.nan_to_num(information[classes == k]).clip(0, None).sum(0)
        if total.sum() <= 0:  # no pattern of this base: keep every reflection
            chosen[:] = True
            continue
        order = np.argsort(-total)
        held = np.cumsum(total[order]) / total.sum()
        chosen[order[: int(np.searchsorted(held, keep)) + 1]] = True
    return chosen


def _shells(hk: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Shell index (J,) of each reflection: equal ``|g|`` in base ``G`` to 2 %."""
    length = np.linalg.norm(hk @ G.T, axis=1)
    return np.unique(np.round(np.log(length) / 0.02).astype(int), return_inverse=True)[1].ravel()


def initialise(data, n_classes: int, n_init: int, seed: int, progress: bool = False) -> dict:
    """Everything the model starts from, measured on pooled data.

    1. The probe: centre and radius from a few patterns; the disk profile
       (mean central disk of the sample, origins refined by a likelihood fit
       of the central disk) and a pseudo-Voigt edge fitted to it.
    2. The lattices: tiles of neighbouring positions (as many as it takes
       for about ``TILE_COUNTS`` scattered electrons per tile, see
       :func:`~stemae.strain.pooled.tile_size`) summed on their central
       beams; disks found in each sum (after removing the ring-median
       background); every sum's lattice indexed against the sum with the
       strongest disks (with an orientation search for other grains); the
       lattice shapes clustered into ``n_classes`` bases.
    3. Per pattern of the sample, a likelihood fit started from its tile's
       lattice: the background's radial shape (pixels outside all disks),
       each reflection's typical strength, the reflections worth fitting
       (those holding ``KEEP_INFORMATION`` of the strain information, see
       :func:`_informative`), and the spread of orientations, which bounds
       the orientation search at prediction.

    Returns
    -------
    dict of ``G`` (K, 2, 2), ``hk``, ``shells``, ``strength`` (K, J),
    ``disks`` (template and voigt tables), ``voigt`` (its parameters),
    ``background``, ``radius``, ``center``, ``max_turn`` and ``spread``
    (radians), ``tile`` (side in scan positions), ``sample`` (T * t, t,
    Qy, Qx) the patterns of the T tiles (t x t positions each) stacked as
    a scan, ``check`` (:func:`~stemae.strain.pooled.lattice_check` of the
    tile sums).
    """
    Ry, Rx, Qy, Qx = data.shape
    rng = np.random.default_rng(seed)
    probe_idx = rng.choice(Ry * Rx, min(64, Ry * Rx), replace=False)
    first = read_patterns(data, *np.unravel_index(probe_idx, (Ry, Rx)))
    center0, r0 = estimate_probe(first)
    tile = tile_size(first, center0, r0)
    rows, cols = tile_positions((Ry, Rx), tile, max(8, int(np.ceil(n_init / tile**2))), seed)
    T, n = rows.shape
    patterns = read_patterns(data, rows.ravel(), cols.ravel())
    origins = beam_centers(patterns, r0, center0)
    disk, radius = disk_profile(patterns, origins, r0)
    with torch.no_grad():
        origins = fit_central_beam(torch.as_tensor(patterns), torch.as_tensor(origins, dtype=torch.float32),
                                   torch.as_tensor(disk), DISK_DR, radius).double().numpy()
    disk, radius = disk_profile(patterns, origins, radius)
    voigt, voigt_params = fit_pseudo_voigt(disk)

    # Lattices of the tile sums (each summed on its first pattern's beam).
    base_o = origins.reshape(T, n, 2)[:, 0]
    sums = np.stack([aligned_sum(patterns[t * n : (t + 1) * n], origins[t * n : (t + 1) * n], np.round(base_o[t]))
                     for t in range(T)])
    base_o = np.round(base_o)
    clean = np.stack([s - ring_median_background(s, o, radius + 3) for s, o in zip(sums, base_o)])
    disks = find_disks(clean, radius, np.median(base_o, 0), min_relative_intensity=0.02, max_peaks=64)
    # The basis of the tile sum that it explains best, among the five with
    # the strongest disks (a tile astride a grain boundary holds two lattices).
    strongest = np.argsort(-np.sort(disks["intensity"], axis=-1)[..., -8:-1].sum(-1))[:5]
    best = -1.0
    for t in strongest:
        try:
            G_c = disk_basis(disks, int(t), radius)
        except ValueError:
            continue
        score = lattice_check({k: v[t : t + 1] for k, v in disks.items()}, G_c, radius)
        if score["indexed"] + score["sites"] > best:
            best, G0 = score["indexed"] + score["sites"], G_c
    if best < 0:
        raise ValueError("no lattice found in the summed patterns: is there a crystal in the scan?")
    tol = 0.15 * np.linalg.norm(G0, axis=0).min()
    P, Wt, C = disks["positions"], disks["intensity"], disks["central"]
    fit = fit_lattice(P, Wt, C, G0, tol)
    lost = ~fit["ok"] | (fit["fraction"] < 0.6)
    if lost.any():
        start = np.broadcast_to(G0, (T, 2, 2)).copy()
        start[lost] = rotation_matrix(index_search(P[lost], Wt[lost], C[lost], G0, tol)) @ G0
        redo = fit_lattice(P, Wt, C, start, tol)
        for k in fit:
            fit[k][lost] = redo[k][lost]
    good = fit["ok"] & (fit["fraction"] >= 0.6)  # tiles whose disks the lattice explains
    if good.sum() < n_classes:
        raise ValueError("too few tiles could be indexed to find the lattice: is there a crystal in the scan?")
    G_t = align_to_reference(fit["G"][good], G0)
    check = lattice_check({k: v[good] for k, v in disks.items() if k != "radius"}, G_t, radius)
    if not check["ok"]:
        warnings.warn(
            f"indexing doubtful: the lattices explain {check['indexed']:.0%} of the disk intensity in the summed "
            f"tiles and find disks at {check['sites']:.0%} of their sites; the bases may be wrong",
            stacklevel=3,
        )
    Gk, label = _cluster_bases(G_t, n_classes, seed)
    center = np.median(origins, 0)
    hk = _reflection_indices(Gk, center, (Qy, Qx), radius)
    shells = _shells(hk, Gk[0])

    # Per-pattern likelihood fits from each tile's lattice.
    tiles_ok = np.flatnonzero(good)
    sel = np.concatenate([np.arange(t * n, (t + 1) * n) for t in tiles_ok])
    cls = np.repeat(label, n)
    Gstart = np.repeat(G_t, n, 0)
    A0 = Gstart @ np.linalg.inv(Gk[cls])
    x = torch.as_tensor(patterns[sel])
    g = torch.as_tensor((hk @ np.swapaxes(Gk, -1, -2))[cls], dtype=torch.float32)  # (N, J, 2)
    o = torch.as_tensor(origins[sel], dtype=torch.float32)
    with torch.no_grad():
        first_fit = fit_disk_lattice(x, o, torch.as_tensor(A0, dtype=torch.float32), g, torch.as_tensor(disk),
                                     DISK_DR, radius, iterations=4, regather=(1, 2, 3), noise_floor=NOISE_FLOOR)
        centres = (first_fit["origin"][:, None] + g @ first_fit["A"].transpose(-1, -2)).double().numpy()
        background = background_profile(patterns[sel], first_fit["origin"].double().numpy(), centres, radius)
        bg = torch.as_tensor(background)
        second = fit_disk_lattice(x, first_fit["origin"], first_fit["A"], g, torch.as_tensor(disk), DISK_DR, radius,
                                  background=bg, iterations=2, regather=(1,), local_background=False,
                                  noise_floor=NOISE_FLOOR)
        # Each shell's Bragg disks, measured around their fitted centres.
        o2 = second["origin"].double().numpy()
        centres = o2[:, None] + (g @ second["A"].transpose(-1, -2)).double().numpy()
        amps = second["amplitudes"][:, 1:].double().numpy()
        centres[~second["on"][:, 1:].numpy()] = np.nan
        measured = shell_profiles(patterns[sel], o2, centres, amps, background, second["background"].double().numpy(),
                                  shells, radius)
        n_tab = len(disk)
        template, fitted, shell_params = [disk], [voigt], []
        measured = np.pad(measured, ((0, 0), (0, max(0, n_tab - measured.shape[1]))))[:, :n_tab]
        for prof in measured:
            if np.isfinite(prof).all():
                v, par = fit_pseudo_voigt(prof, radius=radius)
            else:
                prof, v, par = disk, voigt, dict(voigt_params)
            template.append(prof)
            fitted.append(v)
            shell_params.append(par)
        tables = dict(template=np.stack(template), voigt=np.stack(fitted))
        rows = torch.as_tensor(shells + 1)
        second = fit_disk_lattice(x, second["origin"], second["A"], g, torch.as_tensor(tables["voigt"]), DISK_DR,
                                  radius, rows=rows, background=bg, iterations=3, regather=(1, 2),
                                  local_background=False, noise_floor=NOISE_FLOOR)
    # The bases again, from every pattern's fitted lattice (tiles straddling
    # phases blur the first estimate).
    G_pat = second["A"].double().numpy() @ Gk[cls]
    if n_classes > 1:
        Gk, cls = refine_bases(G_pat, Gk)
    kept = _informative(second["disk_information"][:, 1:].double().numpy(), cls, n_classes)
    hk, shells = hk[kept], shells[kept]
    total = np.maximum(patterns[sel].sum((1, 2)), 1.0)
    amp = second["amplitudes"][:, 1:][:, kept].double().numpy() / total[:, None]
    amp = np.where(second["on"][:, 1:][:, kept].numpy(), amp, np.nan)
    strength = np.zeros((n_classes, len(hk)))
    for k in range(n_classes):
        seen = np.isfinite(amp[cls == k]).any(0)
        if seen.any():
            strength[k, seen] = np.nanmedian(amp[cls == k][:, seen], axis=0).clip(0, None)
    # Orientation spread of the sample, relative to each base, modulo the lattice symmetry.
    G_fit = align_to_reference(G_pat, Gk[cls])
    angle = lambda G: np.arctan2(G[:, 1, 0], G[:, 0, 0])  # noqa: E731
    turn = np.abs(np.remainder(angle(G_fit) - angle(Gk[cls]) + np.pi, 2 * np.pi) - np.pi)
    spread = float(np.percentile(turn, 99)) if len(turn) else np.pi
    max_turn = np.pi if spread > SEARCH_TURN else spread + TURN_MARGIN
    return dict(G=Gk, hk=hk, shells=shells, strength=strength, disks=tables,
                voigt=dict(central=voigt_params, shells=shell_params), background=background, radius=radius,
                center=center, max_turn=max_turn, spread=spread, tile=int(tile), check=check,
                sample=patterns.reshape(T * math.isqrt(n), math.isqrt(n), Qy, Qx))
