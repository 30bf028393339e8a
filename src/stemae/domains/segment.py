"""Segmentation of windows into domain types, and per-frame statistics.

A window is domain-free when its spectrum shows no stripe wave beyond what
noise alone gives (its order statistic at or below the null threshold, see
:func:`stemae.domains.windows.order_null`). The ordered windows are
grouped by wall angle: the types are the modes of the angles' density on
the half circle (angles are axial, period 180 degrees), found jointly for
all frames of a series, so a type means the same in every frame and the
same images give the same types and numbers in every run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from stemae.errors import InputError

#: Width (standard deviation, degrees) of the kernel of the wall-angle density.
ANGLE_KERNEL = 4.0
#: Modes closer than this (degrees) are one type.
MIN_SEPARATION = 15.0
#: A type holds at least this share of the windows of some frame.
MIN_SHARE = 0.03
#: A boundary window's share of a type is measured against that type's
#: interior windows up to this many grid steps away.
REACH = 2
#: Interior windows whose wave is weaker than this share of their type's
#: median in the frame (a false alarm next to a wall, a bend contour) are
#: no reference for a boundary window; those weaker than this share of
#: their type's median within :data:`REACH` are examined as one (their
#: window holds the stripes, their centre may not: :func:`weak_centres`).
REFERENCE_GUARD = 0.6
#: A window whose centre no neighbouring stripe type covers more than this
#: share of is domain-free, even with no domain-free window beside it (a
#: domain-free blob about a window wide). On a wall between two stripe
#: types each covers about one half.
UNCOVERED = 0.25
#: A window's share of a type read against the type's largest amplitude
#: within this many window sides of its centre (:func:`assign_by_local_share`).
LOCAL_REACH = 0.375
#: ... and only where that amplitude exceeds noise's (the 99th percentile
#: over domain-free windows) by this factor.
NOISE_MARGIN = 1.5


def angle_modes(orientation: np.ndarray, frame: np.ndarray, frame_sizes: np.ndarray, n_types: int | None = None
                ) -> np.ndarray:
    """Wall angles (degrees, ascending in [-90, 90)) of the stripe types.

    The density of ``orientation`` on the half circle (a Gaussian kernel of
    :data:`ANGLE_KERNEL` degrees on a 0.5 degree grid) is searched for local
    maxima from the strongest down; a maximum within :data:`MIN_SEPARATION`
    of a stronger one is dropped, and so is a mode whose windows (those
    nearer it than any other mode) are less than :data:`MIN_SHARE` of every
    frame's windows. ``n_types`` keeps that many of the strongest instead.

    Parameters
    ----------
    orientation : (N,) wall angles of the ordered windows, degrees
    frame : (N,) frame index of each window
    frame_sizes : (T,) number of windows of each frame (ordered or not)
    n_types : number of stripe types, or ``None`` to choose

    Returns
    -------
    (M,) mode angles, degrees
    """
    if len(orientation) == 0:
        return np.zeros(0)
    grid = np.arange(-90.0, 90.0, 0.5)
    hist = np.bincount(np.round((np.asarray(orientation) + 90.0) / 0.5).astype(int) % len(grid),
                       minlength=len(grid)).astype(float)
    density = ndimage.gaussian_filter1d(hist, ANGLE_KERNEL / 0.5, mode="wrap")
    is_max = (density >= np.roll(density, 1)) & (density > np.roll(density, -1)) & (density > 0)
    candidates = [grid[i] for i in np.argsort(-density) if is_max[i]]
    modes: list[float] = []
    for a in candidates:
        if all(axial_distance(a, m) >= MIN_SEPARATION for m in modes):
            modes.append(a)
    if n_types is not None:
        return np.sort(np.array(modes[:n_types]))
    while modes:
        near = nearest_mode(orientation, np.array(modes))
        share = np.array([[np.sum((near == j) & (frame == t)) / max(n, 1) for t, n in enumerate(frame_sizes)]
                          for j in range(len(modes))]).max(1)
        if share.min() >= MIN_SHARE:
            break
        modes.pop(int(np.argmin(share)))
    return np.sort(np.array(modes))


def axial_distance(a, b) -> np.ndarray:
    """Distance between axial angles in degrees (period 180), in [0, 90]."""
    return np.abs((np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0)


def nearest_mode(orientation: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Index ``(N,)`` of the mode nearest each axial angle."""
    return np.argmin(axial_distance(np.asarray(orientation)[:, None], modes[None, :]), axis=1)


def assign_types(order: np.ndarray, orientation: np.ndarray, threshold: float, modes) -> np.ndarray:
    """Domain type of every window given the types' wall angles (the
    per-batch half of :func:`segment`): 0 (domain-free) where ``order`` is at
    or below ``threshold``, else 1 + the index of the nearest of ``modes``
    (degrees). ``order``, ``orientation`` any shape; returns int labels of it."""
    modes = np.asarray(modes, np.float64)
    ordered = order > threshold
    labels = np.zeros(np.shape(order), int)
    if len(modes):
        labels[ordered] = 1 + nearest_mode(orientation[ordered], modes)
    return labels


def segment(order: np.ndarray, orientation: np.ndarray, threshold: float, n_clusters: int | None = None
            ) -> tuple[np.ndarray, dict]:
    """Domain type of every window.

    Parameters
    ----------
    order : (T, ny, nx) stripe order statistic of each window
    orientation : (T, ny, nx) wall angle, degrees
    threshold : order at or below which a window is domain-free
    n_clusters : number of types including the domain-free one; ``None`` chooses

    Returns
    -------
    labels : (T, ny, nx) int: 0 domain-free, then the stripe types by wall
        angle from -90 to 90 degrees
    info : dict: ``n_clusters`` (always counting the domain-free type, which
        may be empty) and ``type_angles`` (the stripe types' mode angles)
    """
    if n_clusters is not None and n_clusters < 1:
        raise InputError(f"the number of domain types must be at least 1 (the domain-free type), got {n_clusters}")
    ordered = order > threshold
    frame = np.broadcast_to(np.arange(order.shape[0])[:, None, None], order.shape)
    modes = angle_modes(orientation[ordered], frame[ordered], np.full(order.shape[0], order[0].size),
                        None if n_clusters is None else n_clusters - 1)
    labels = assign_types(order, orientation, threshold, modes)
    return labels, {"n_clusters": 1 + len(modes), "type_angles": [float(a) for a in modes]}


def _around(i: int, j: int, r: int) -> tuple[slice, slice]:
    """Index of the grid windows at most ``r`` steps from window ``(i, j)``
    on each axis (clipped at the grid's start; NumPy clips the end)."""
    return np.s_[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Windows ``(T, ny, nx)`` whose 3x3 neighbourhood on the grid holds more than one type."""
    return np.stack([ndimage.maximum_filter(lab, 3, mode="nearest") != ndimage.minimum_filter(lab, 3, mode="nearest")
                     for lab in labels])


def refine_boundaries(labels: np.ndarray, power: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Labels near boundaries between types from smaller windows.

    A window on a boundary (:func:`boundary_mask`) mixes both sides. A
    window of half the side at the same centre shows each neighbouring
    stripe type's wave with a power that grows with the share of the window
    that type covers, squared: its power in the type's direction (within
    :data:`MIN_SEPARATION` / 2 of the type's wave direction) over the median
    of the same in that type's interior windows of the frame is that
    squared share. The centre takes the stripe type of the largest share, or
    the domain-free type (when it is a neighbour) if no stripe type covers
    half the window (a share below 1/4). A domain-free window stays so
    unless its smaller window's power in that type's direction is beyond
    what noise alone gives (above 1 in the units of ``order``): a weak
    neighbour's wave is otherwise read into noise.

    Parameters
    ----------
    labels : (T, ny, nx) from :func:`segment`
    power : (T, ny, nx, S) the smaller windows' power per direction sector
        over the noise's threshold
        (:func:`stemae.domains.windows.half_window_power`), NaN where not
        measured: it is needed at the boundary windows and at some interior
        windows of every type
    modes : (M,) the stripe types' wall angles (``info['type_angles']``), degrees

    Returns
    -------
    (T, ny, nx) types
    """
    out = labels.copy()
    if len(modes) == 0:
        return out
    S = power.shape[-1]
    sector_angle = (np.arange(S) + 0.5) * 180.0 / S - 90.0  # wall angle of each wave-direction sector
    near = axial_distance(sector_angle[None, :], np.asarray(modes)[:, None]) <= MIN_SEPARATION / 2  # (M, S)
    edges = boundary_mask(labels)
    for t in range(labels.shape[0]):
        lab, edge = labels[t], edges[t]
        typed = np.stack([power[t][..., near[m]].max(-1) for m in range(len(modes))], -1)  # (ny, nx, M)
        ref = np.full(len(modes), np.inf)
        for m in range(len(modes)):
            inner = typed[..., m][(lab == m + 1) & ~edge]
            if np.isfinite(inner).any():
                ref[m] = np.nanmedian(inner)
        for i, j in np.argwhere(edge):
            present = np.unique(lab[_around(i, j, 1)])
            stripes = present[present > 0]
            if len(stripes) == 0:
                continue
            share = typed[i, j, stripes - 1] / ref[stripes - 1]
            best = int(np.argmax(share))
            if lab[i, j] == 0 and typed[i, j, stripes[best] - 1] <= 1:
                continue  # domain-free, and its smaller window shows no stripe beyond noise either
            out[t, i, j] = 0 if (0 in present and share[best] < 0.25) else stripes[best]
    return out


def drop_empty_types(labels: np.ndarray, modes) -> tuple[np.ndarray, np.ndarray]:
    """Stripe types left without windows (all of theirs were on boundaries
    and went to their neighbours) dropped, the others renumbered in order.

    Parameters
    ----------
    labels : (T, ny, nx) types, 0 domain-free
    modes : (M,) the stripe types' wall angles, degrees

    Returns
    -------
    labels : (T, ny, nx)
    modes : (M',) the wall angles of the stripe types that kept windows
    """
    modes = np.asarray(modes, float)
    kept = [m for m in range(1, len(modes) + 1) if (labels == m).any()]
    renumber = np.zeros(len(modes) + 1, int)
    renumber[kept] = np.arange(1, len(kept) + 1)
    return renumber[labels], modes[np.array(kept, int) - 1]


def wall_pairs(labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The references of one frame's boundary windows.

    Parameters
    ----------
    labels : (ny, nx) types of one frame
    edges : (ny, nx) bool, the windows to read (:func:`boundary_mask`, and
        :func:`weak_centres`); none of them is a reference

    Returns
    -------
    (P, 5) int rows ``(i, j, type, a, b)``: boundary window ``(i, j)``, a
    stripe type in its 3x3 neighbourhood, and an interior window ``(a, b)``
    of that type at most :data:`REACH` grid steps away
    """
    rows = []
    for i, j in np.argwhere(edges):
        present = np.unique(labels[_around(i, j, 1)])
        box = _around(i, j, REACH)
        i0, j0 = box[0].start, box[1].start
        for s in present[present > 0]:
            for a, b in np.argwhere((labels[box] == s) & ~edges[box]):
                rows.append((i, j, s, a + i0, b + j0))
    return np.array(rows, int).reshape(-1, 5)


def weak_centres(amplitude: np.ndarray, labels: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Interior windows whose stripe wave is weak at their centre.

    A domain-free blob about a window wide leaves the stripes around it in
    every window over it, so those windows are typed as stripes with no
    domain-free window beside them; their wave read at their centre
    (:func:`~stemae.domains.lockin.banked_lock_in`) is weak. Weak is
    measured against the same type's interior windows within
    :data:`REACH` grid steps, not the frame's: regions of one type differ
    in contrast several-fold.

    Parameters
    ----------
    amplitude : (ny, nx) each window's wave at its own centre (NaN where not read)
    labels, inner : (ny, nx) types and interior stripe windows of one frame

    Returns
    -------
    (ny, nx) bool: ``inner`` windows below :data:`REFERENCE_GUARD` of the
    median of their type's interior windows within :data:`REACH`
    """
    local = np.full(labels.shape, np.nan)
    for i, j in np.argwhere(inner):
        box = _around(i, j, REACH)
        local[i, j] = np.median(amplitude[box][inner[box] & (labels[box] == labels[i, j])])
    return inner & (amplitude < REFERENCE_GUARD * local)


def assign_walls(labels: np.ndarray, pairs: np.ndarray, share: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Types of one frame's boundary windows from their shares of each type.

    A boundary window's share of a stripe type is the median of ``share``
    over its usable references of that type; it takes the type of the
    largest share, or the domain-free type if no share reaches one half
    and a domain-free window is beside it, or if no share reaches
    :data:`UNCOVERED` (the centre lies outside every stripe region). A
    window without usable references keeps its type.

    Parameters
    ----------
    labels : (ny, nx) types of one frame
    pairs : (P, 5) from :func:`wall_pairs`
    share : (P,) the reference's wave at the boundary window over at its own centre
    usable : (P,) bool, the reference passed :data:`REFERENCE_GUARD`

    Returns
    -------
    (ny, nx) types
    """
    out = labels.copy()
    pairs, share = pairs[usable], share[usable]
    for i, j in np.unique(pairs[:, :2], axis=0):
        mine = (pairs[:, 0] == i) & (pairs[:, 1] == j)
        types = np.unique(pairs[mine, 2])
        med = np.array([np.median(share[mine & (pairs[:, 2] == s)]) for s in types])
        free = (labels[_around(i, j, 1)] == 0).any()
        out[i, j] = 0 if med.max() < (0.5 if free else UNCOVERED) else types[np.argmax(med)]
    return out


def unreferenced(labels: np.ndarray, examined: np.ndarray, pairs: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Examined windows of one frame with a stripe type in their 3x3
    neighbourhood that has no usable reference (:func:`wall_pairs`): where
    regions are not much larger than a window, a type's interior windows are
    few or none, and :func:`assign_walls` cannot weigh it.

    Returns
    -------
    (ny, nx) bool
    """
    ok = {tuple(p) for p in pairs[usable][:, :3]}
    out = np.zeros(labels.shape, bool)
    for i, j in np.argwhere(examined):
        present = np.unique(labels[_around(i, j, 1)])
        out[i, j] = any((i, j, s) not in ok for s in present[present > 0])
    return out


def assign_by_local_share(labels: np.ndarray, where: np.ndarray, types: np.ndarray, at: np.ndarray,
                          near: np.ndarray, typical: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Types of windows from each stripe type's share of their centre, read
    against the type's own largest amplitude nearby instead of an interior
    window.

    A type is a candidate for a window if it is in the window's 3x3
    neighbourhood or its largest amplitude near the window reaches the
    type's typical one (a region that falls between windows), and if that
    amplitude exceeds :data:`NOISE_MARGIN` times noise's. The share is the
    amplitude at the centre over the largest nearby; the window takes the
    candidate of the largest share, or the domain-free type as in
    :func:`assign_walls`.

    Parameters
    ----------
    labels : (ny, nx) types of one frame
    where : (ny, nx) bool, the windows to type
    types : (K,) the stripe types
    at, near : (K, ny, nx) each type's banked lock-in amplitude at the
        window centres and its largest within :data:`LOCAL_REACH` of a window
        side of them (:func:`~stemae.domains.lockin.amplitude_map`)
    typical, noise : (K,) each type's median amplitude at its interior
        windows, and the 99th percentile at domain-free ones (0 if unknown)

    Returns
    -------
    (ny, nx) types
    """
    out = labels.copy()
    for i, j in np.argwhere(where):
        near_ij = near[:, i, j]
        present = np.isin(types, labels[_around(i, j, 1)])
        cand = (present | (near_ij >= typical)) & (near_ij >= NOISE_MARGIN * noise)
        if not cand.any():
            continue
        share = np.where(cand, at[:, i, j] / np.maximum(near_ij, 1e-12), -np.inf)
        free = (labels[_around(i, j, 1)] == 0).any()
        k = int(np.argmax(share))
        out[i, j] = 0 if share[k] < (0.5 if free else UNCOVERED) else types[k]
    return out


def circular_mean(orientation: np.ndarray) -> float:
    """Mean of axial angles in degrees (period 180), in [-90, 90); NaN if empty."""
    if orientation.size == 0:
        return float("nan")
    t = np.deg2rad(2 * orientation)
    return float(np.rad2deg(np.arctan2(np.sin(t).mean(), np.cos(t).mean())) / 2)


def domain_statistics(labels: np.ndarray, orientation: np.ndarray, period: np.ndarray, order: np.ndarray,
                      n_clusters: int) -> dict[str, np.ndarray]:
    """Per frame and domain type: fraction of windows, mean orientation, median period.

    Parameters
    ----------
    labels, orientation, period, order : (T, ny, nx)
    n_clusters : number of domain types

    Returns
    -------
    dict of (T, n_clusters) arrays: ``fractions``, ``type_orientation``
    (degrees, axial mean), ``type_period`` (pixels, median), NaN where a type
    is absent or, for orientation and period, domain-free; and of
    (n_clusters,) arrays over the whole series: ``series_orientation``,
    ``series_period``, ``series_order`` (median order statistic).
    """
    T = labels.shape[0]
    frac = np.zeros((T, n_clusters))
    ang = np.full((T, n_clusters), np.nan)
    per = np.full((T, n_clusters), np.nan)
    for t in range(T):
        for k in range(n_clusters):
            m = labels[t] == k
            frac[t, k] = m.mean()
            if m.any() and k > 0:
                ang[t, k] = circular_mean(orientation[t][m])
                per[t, k] = np.median(period[t][m])
    series_ang = np.array([circular_mean(orientation[labels == k]) if k > 0 else np.nan for k in range(n_clusters)])
    series_per = np.array([np.median(period[labels == k]) if k > 0 and (labels == k).any() else np.nan
                           for k in range(n_clusters)])
    series_order = np.array([np.median(order[labels == k]) if (labels == k).any() else np.nan
                             for k in range(n_clusters)])
    return {"fractions": frac, "type_orientation": ang, "type_period": per, "series_orientation": series_ang,
            "series_period": series_per, "series_order": series_order}
