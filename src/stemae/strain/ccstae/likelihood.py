"""Disk lattices in PyTorch: windows, a likelihood model of the pattern, and
per-pattern maximum-likelihood fits with their Fisher information.

A pattern is modelled as disks of one measured shape (the probe aperture
image, a radial profile ``p(r)``) at ``c_j = o + A g_j``: ``o`` the
central-beam position, ``A`` the 2x2 transform of the pattern relative to a
base lattice whose reflections are ``g_j`` (pixels, ``(x, y)``), plus a
diffuse background ``s M(|q - o|)`` of known radial shape ``M`` and, per
disk, a constant offset:

    lambda(q) = a_j p(|q - c_j|) + b_j + s M(|q - o|)    (q in disk j's window)

The transform moves disk *centres* only; disks keep their size, as on a real
crystal. Amplitudes ``a_j``, offsets ``b_j`` and the background scale ``s``
enter linearly and are solved exactly at every step; origin and transform
are found by Fisher scoring on the Poisson likelihood (iteratively
reweighted least squares, weights ``1 / lambda``). All functions are batched
over patterns ``B`` and reflections ``J``.

Radial profiles are tables sampled every ``dr`` pixels from ``r = 0``
(:func:`table_lookup`): measured from the data's own central disk, or a
fitted pseudo-Voigt edge, or an error-function edge.
"""

from __future__ import annotations

import math

import torch

from stemae.nn.sampling import (
    gather_windows,
    profile_band,
    sample_bilinear,
    table_lookup,
    window_offsets,
)


def _solve2(n11, n12, n22, b1, b2):
    """Batched solution of symmetric 2x2 systems ``[[n11, n12], [n12, n22]] x = b``."""
    det = torch.maximum(n11 * n22 - n12 * n12, 1e-6 * (n11 * n22).abs() + 1e-30)
    return (n22 * b1 - n12 * b2) / det, (n11 * b2 - n12 * b1) / det


def linear_sums(vals, prof, m, w, local_background: bool) -> dict:
    """Weighted sums (B, J) (and (B,) for the background) that the linear
    parameters of :func:`fit_disk_lattice`'s model need: per disk ``pp``,
    ``p1``, ``11``, ``pv``, ``1v`` (profile ``p``, constant ``1``, data
    ``v``) and, with a background shape ``m``, ``pm``, ``1m`` per disk and
    ``mm``, ``mv`` per pattern. Inputs (B, J, P)."""
    wp = w * prof
    out = {"pp": (wp * prof).sum(-1), "pv": (wp * vals).sum(-1)}
    if local_background:
        out.update({"p1": wp.sum(-1), "11": w.sum(-1), "1v": (w * vals).sum(-1)})
    else:
        zero = torch.zeros_like(out["pp"])
        out.update({"p1": zero, "11": torch.ones_like(zero), "1v": zero})
    if m is not None:
        # The per-pattern sums go through the per-disk ones: compiled, they
        # then share the per-disk sums' pass over the pixels (a sum over
        # both axes at once made a pass of its own, a tenth of the fit).
        wm = w * m
        out.update({"pm": (wp * m).sum(-1), "1m": wm.sum(-1) if local_background else torch.zeros_like(out["pp"]),
                    "mm": (wm * m).sum(-1).sum(-1), "mv": (wm * vals).sum(-1).sum(-1)})
    return out


def solve_linear(sums: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-disk amplitude ``a`` and offset ``b`` (B, J) and background scale
    ``s`` (B,) from :func:`linear_sums`, exactly (Schur complement on ``s``)."""
    s_pp, s_pv, s_p1, s_11, s_1v = sums["pp"], sums["pv"], sums["p1"], sums["11"], sums["1v"]
    if "mm" not in sums:
        s = torch.zeros(s_pp.shape[0], dtype=s_pp.dtype, device=s_pp.device)
    else:
        v_p, v_1 = sums["pm"], sums["1m"]
        xa, xb = _solve2(s_pp, s_p1, s_11, v_p, v_1)  # N^-1 v
        ya, yb = _solve2(s_pp, s_p1, s_11, s_pv, s_1v)  # N^-1 b
        den = sums["mm"] - (v_p * xa + v_1 * xb).sum(1)
        num = sums["mv"] - (v_p * ya + v_1 * yb).sum(1)
        s = num / (den + 1e-9 * sums["mm"] + 1e-30)
        s_pv = s_pv - s[:, None] * v_p
        s_1v = s_1v - s[:, None] * v_1
    a, b = _solve2(s_pp, s_p1, s_11, s_pv, s_1v)
    return a, b, s


def _scaled_solve(hess: torch.Tensor, grad: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Steps ``(B, n)`` solving ``hess step = grad`` after scaling to unit
    diagonal (parameters of very different information, such as a bright
    beam's origin and a weak lattice, stay well conditioned in float32); a
    small ridge keeps undetermined parameters where they are."""
    d = torch.diagonal(hess, dim1=-2, dim2=-1)
    d = d.clamp_min(1e-12 * d.amax(-1, keepdim=True).clamp_min(1e-30))
    s = d.rsqrt()
    scaled = hess * s[:, :, None] * s[:, None, :] + 1e-6 * eye
    y, _ = torch.linalg.solve_ex(scaled, grad * s)
    return torch.nan_to_num(y * s, nan=0.0, posinf=0.0, neginf=0.0)


def fit_disk_lattice(
    images: torch.Tensor,
    origin: torch.Tensor,
    A: torch.Tensor,
    reflections: torch.Tensor,
    disk: torch.Tensor,
    disk_dr: float,
    radius: float,
    *,
    rows: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    background_dr: float = 1.0,
    band: tuple[float, float] | None = None,
    iterations: int = 4,
    regather: tuple[int, ...] = (2,),
    local_background: bool = True,
    noise_floor: float = 0.05,
    plateau_floor: float = 0.5,
    min_on_detector: float = 0.5,
    settle: float = 1.0,
    use_central: bool = True,
    unbiased: bool = True,
) -> dict[str, torch.Tensor]:
    """Maximum-likelihood fit of origin and transform to each pattern's disks.

    The model is the module's (disks of the measured profile ``disk``, per
    disk amplitude and offset, a diffuse background of radial shape
    ``background`` with a per-pattern scale). Every disk whose centre lies
    within ``min_on_detector`` radii outside the detector edge takes part,
    including those the edge cuts (their off-detector pixels get no
    weight). Each iteration solves the linear parameters with Poisson
    weights ``1 / max(lambda, noise_floor)`` of the last model (at the
    start, of a first unweighted solve) and takes one Fisher-scoring step on
    the six geometric parameters, using the information left after the
    per-disk amplitude and offset are accounted for. Windows are gathered at
    the start and again before the iterations listed in ``regather``
    (coarse to fine: a start a few pixels off still converges; the last
    model's linear parameters give the new windows' weights).

    With several starts per pattern (``A`` (B, K, 2, 2), one base lattice
    each), every start is evaluated as a first iteration would (windows
    gathered, linear parameters solved) and the fit goes on from the one
    whose Bragg disks sit best on the pattern: the most evidence for disks
    where it puts them (each disk's amplitude squared over its variance,
    less what a disk-free window gives). The other starts cost one
    gathering and linear solve each, and the kept one's evaluation is its
    first iteration.

    Parameters
    ----------
    images : (B, H, W) detector counts
    origin : (B, 2) initial central-beam positions ``(x, y)``
    A : (B, 2, 2) initial transforms of the base reflections, or
        (B, K, 2, 2) several starts, start ``k`` transforming base ``k``
    reflections : (J, 2) or (B, J, 2) base reflection vectors ``g_j``
        (pixels); with several starts (K, J, 2) or (B, K, J, 2), one base each
    disk : (n,) radial profile of a disk (1 inside, 0 far outside), sampled
        every ``disk_dr`` pixels from ``r = 0``, or (m, n) several: the
        central disk uses row 0 and reflection ``j`` row ``rows[j]``
        (Bragg disks are often a little smaller and blurrier than the central
        disk, the more so the further out: a lattice that varies within the
        probe smears them in proportion to ``|g|``)
    radius : disk radius (pixels), where the profile falls to one half
    rows : (J,) int, the profile row of each reflection when ``disk`` has
        several (default row 1 for all)
    background : (m,) radial shape of the diffuse background around the
        origin, sampled every ``background_dr`` pixels; ``None`` for none
    band : inner and outer radius of each disk's window (pixels); default
        :func:`profile_band`, the outer one at most 0.45 of the shortest
        reflection
    iterations : Fisher-scoring steps (at least 1)
    regather : iterations before which the windows are gathered again
    local_background : fit a constant offset per disk
    noise_floor : smallest model value in the weights (counts)
    plateau_floor : a Bragg disk's pixels weigh as if their variance were at
        least this share of the disk's plateau (its fitted amplitude), so
        its foot weighs at most twice its plateau (at the default) and the
        disk is placed by its whole edge; with pure Poisson weights (0) the
        foot, where the model predicts almost nothing, outweighs the rest,
        which is efficient only where the edge's shape is exact (a lattice
        varying within the probe reshapes it). The reported information is
        the sandwich form's for these weights, disk by disk. The central
        beam, the probe's own aperture, keeps Poisson weights
    min_on_detector : disks whose centre is more than this many radii off
        the detector are left out
    settle : after the last gathering, a pattern whose Fisher step is
        shorter than this many standard deviations (the step's length in the
        metric of the information) stops there: its later steps would follow
        the noise (0: every pattern takes every step)
    use_central : include the central beam (it constrains the origin)
    unbiased : count each disk's information with ``a^2 - var(a)`` rather
        than its fitted amplitude squared, which noise inflates (set False
        for noise-free patterns, whose amplitudes are exact)

    Returns
    -------
    dict with ``origin`` (B, 2), ``A`` (B, 2, 2), ``information`` (B, 6, 6)
    (Fisher information of ``(o_x, o_y, A_00, A_01, A_10, A_11)`` at the
    last evaluation, before its step), ``amplitudes`` (B, J + 1) and
    ``offsets`` (B, J + 1) (central beam first; counts at the disk's
    plateau), ``background`` (B,) scale, ``on`` (B, J + 1) bool, disks
    used, ``chi2`` (B,) Pearson chi-square, ``dof`` (B,) pixels used
    minus fitted parameters and ``disk_information`` (B, J + 1) each disk's
    share of the information on ``A`` (the trace of its term in the
    ``A`` block, ``|g_j|^2`` times its position information with the
    fitted amplitude, which noise inflates for faint disks; 0 for the
    central beam), which says which reflections carry the strain, and
    ``start`` (B,) the start the fit went on from (0 with one).
    """
    B, H, W = images.shape
    dt, dev = images.dtype, images.device
    K = A.shape[1] if A.dim() == 4 else 1  # starts per pattern, side by side as B * K rows until one is kept
    g = reflections.expand((B,) + reflections.shape[-(2 if K == 1 else 3):]).reshape(B * K, -1, 2)
    g = torch.cat([torch.zeros(B * K, 1, 2, dtype=g.dtype, device=g.device), g], 1).to(dt)  # the central beam: g = 0
    J = g.shape[1]
    if band is None:
        bands = [profile_band(d, disk_dr) for d in disk.reshape(-1, disk.shape[-1])]
        inner, outer = min(b[0] for b in bands), max(b[1] for b in bands)
        gmin = g[:, 1:].norm(dim=-1).min().item() if J > 1 else float("inf")
        band = (inner, min(outer, 0.45 * gmin))
    inner, outer = band
    # Padded windows serve the compiled fits' vector loops (see window_offsets);
    # run as they are, the extra pixels are only extra work.
    offsets = window_offsets(outer, inner, dev, multiple=8 if torch.compiler.is_compiling() else 1)
    disk = disk.to(dev, dt)
    row = None
    if disk.dim() == 2:  # central beam: row 0
        bragg = torch.ones(J - 1, dtype=torch.long, device=dev) if rows is None else rows.to(dev).long()
        row = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), bragg]).view(1, J, 1)
    bg = None if background is None else background.to(dev, dt)
    origin, A = origin.to(dt).repeat_interleave(K, 0), A.to(dt).reshape(B * K, 2, 2).clone()
    eye = torch.eye(6, dtype=dt, device=dev)
    gx, gy = g[..., 0], g[..., 1]
    one, zero = torch.ones_like(gx), torch.zeros_like(gx)
    # d c_x / d theta and d c_y / d theta, theta = (o_x, o_y, A00, A01, A10, A11).
    ux = torch.stack([one, zero, gx, gy, zero, zero], -1)
    uy = torch.stack([zero, one, zero, zero, gx, gy], -1)
    lam = None
    m_edge = min_on_detector * radius
    moving = torch.ones(B, dtype=torch.bool, device=dev)
    start = torch.zeros(B, dtype=torch.long, device=dev)
    last_gather = max(regather, default=0)

    def expected(a, b, s, prof, m):  # the model's counts at every window pixel
        lam = a[..., None] * prof
        if local_background:
            lam = lam + b[..., None]
        return lam if m is None else lam + s[:, None, None] * m

    for it in range(max(iterations, 1)):
        centers = origin[:, None] + g @ A.transpose(-1, -2)  # (B * K, J, 2) until one start is kept, then (B, J, 2)
        if it == 0 or it in regather:
            vals, px, py, inside = (t.reshape(centers.shape[:2] + (-1,))
                                    for t in gather_windows(images, centers.reshape(B, -1, 2), offsets))
            m = None
            if bg is not None:  # the smooth background hardly changes as the origin settles
                rb = torch.sqrt((px - origin[:, 0, None, None]) ** 2 + (py - origin[:, 1, None, None]) ** 2)
                m = table_lookup(bg, background_dr, rb)[0]
        on = ((centers[..., 0] >= -m_edge) & (centers[..., 0] <= W - 1 + m_edge)
              & (centers[..., 1] >= -m_edge) & (centers[..., 1] <= H - 1 + m_edge))
        if not use_central:
            on[:, 0] = False
        dx = px - centers[..., 0, None]
        dy = py - centers[..., 1, None]
        r = torch.sqrt(dx * dx + dy * dy).clamp_(min=1e-6)
        w0 = inside * ((r <= outer) & (r >= inner)) * on[..., None]
        prof, slope = table_lookup(disk, disk_dr, r, row)
        # Poisson weights from the last model (on windows gathered again,
        # its linear parameters with the new pixels; at the start, from a
        # first unweighted solve); one set serves the linear solve, the
        # information and the step.
        if it > 0 and it in regather:
            lam = expected(a, b, s, prof, m)
        for _ in range(2 if it == 0 else 1):
            if lam is None:
                w = w0
            else:
                plateau = torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:].clamp_min(0)], 1)[..., None]
                w = w0 / torch.maximum(lam.clamp_min(noise_floor), plateau_floor * plateau)
            sums = linear_sums(vals, prof, m, w, local_background)
            a, b, s = solve_linear(sums)
            lam = expected(a, b, s, prof, m)
        a_info = sums["pp"] - sums["p1"] * sums["p1"] / sums["11"].clamp_min(1e-12)  # information on each amplitude
        if K > 1 and it == 0:
            # Keep each pattern's best start: the most evidence for Bragg
            # disks where it puts them. A disk's evidence is its amplitude's
            # square in units of its variance (its chi-square against no disk
            # there), less the 1/2 a disk-free window gives on average, so the
            # number of disks a start keeps on the detector does not count. (A
            # misfit per pixel would favour the larger lattice: its windows
            # sit further out, where the background gives fewer counts.)
            evidence = ((a[:, 1:].clamp_min(0) ** 2 * a_info[:, 1:] - 0.5) * on[:, 1:]).sum(1)
            start = evidence.view(B, K).argmax(1)
            kept = torch.arange(B, device=dev) * K + start
            (origin, A, g, ux, uy, vals, px, py, inside, on, dx, dy, r, w0, prof, slope, w, lam, a, b, s,
             a_info) = (t[kept] for t in (origin, A, g, ux, uy, vals, px, py, inside, on, dx, dy, r, w0, prof, slope,
                                          w, lam, a, b, s, a_info))
            m = None if m is None else m[kept]
            sums = {key: v[kept] for key, v in sums.items()}
            gx, gy = g[..., 0], g[..., 1]
        res = vals - lam
        # d lambda / d c = -q (dx, dy) with q = a p'(r) / r.
        q = a[..., None] * slope / r
        kx, ky = w * q * dx, w * q * dy  # -(w d lambda/d c)
        tx, ty = -(kx * res).sum(-1), -(ky * res).sum(-1)
        kqx = kx * q
        sxx, sxy, syy = (kqx * dx).sum(-1), (kqx * dy).sum(-1), (ky * q * dy).sum(-1)
        # Information lost to each disk's amplitude and offset (Schur complement).
        n_pp, n_p1, n_11 = sums["pp"], sums["p1"], sums["11"]
        xpx, xpy = -(kx * prof).sum(-1), -(ky * prof).sum(-1)
        if local_background:
            x1x, x1y = -kx.sum(-1), -ky.sum(-1)
        else:
            x1x = x1y = torch.zeros_like(xpx)
        zax, zbx = _solve2(n_pp, n_p1, n_11, xpx, x1x)
        zay, zby = _solve2(n_pp, n_p1, n_11, xpy, x1y)
        sxx = sxx - (xpx * zax + x1x * zbx)
        sxy = sxy - (xpx * zay + x1x * zby)
        syy = syy - (xpy * zay + x1y * zby)
        def assemble(cxx, cxy, cyy):
            return (torch.einsum("bj,bji,bjk->bik", cxx, ux, ux) + torch.einsum("bj,bji,bjk->bik", cxy, ux, uy)
                    + torch.einsum("bj,bji,bjk->bik", cxy, uy, ux) + torch.einsum("bj,bji,bjk->bik", cyy, uy, uy))

        hess = assemble(sxx, sxy, syy)
        # The information is used only by the stopping rule and in the result.
        reported = it == max(iterations, 1) - 1 or (settle > 0 and it > last_gather)
        if reported:
            # Weights below Poisson's (the plateau floor): each disk's position
            # variance is (sum w^2 lam gg) / (sum w gg)^2, so its information is
            # the weighted sum over the ratio rho of the two sums (1 with
            # Poisson weights). A disk's position information grows with its
            # amplitude squared; the fitted amplitude's square overstates it by
            # the amplitude's variance (by a factor two for a disk of a few
            # tens of counts): the reported information uses the unbiased
            # a^2 - var(a).
            shrink = (1 - 1 / (a * a * a_info).clamp_min(1e-12)).clamp(0, 1) if unbiased else torch.ones_like(a)
            qq = w * q * q * (dx * dx + dy * dy)
            full = (qq * (lam.clamp_min(noise_floor) * w).clamp(max=1)).sum(-1)
            rho = torch.where(full > 0, full / qq.sum(-1).clamp_min(1e-30), 1.0)
            info = assemble(sxx * shrink / rho, sxy * shrink / rho, syy * shrink / rho)
        grad = (tx[..., None] * ux + ty[..., None] * uy).sum(1)
        if m is not None:
            # ... and to the background scale, which all disks share.
            vp, v1 = sums["pm"], sums["1m"]
            zav, zbv = _solve2(n_pp, n_p1, n_11, vp, v1)
            yx = -(kx * m).sum(-1) - (xpx * zav + x1x * zbv)
            yy = -(ky * m).sum(-1) - (xpy * zav + x1y * zbv)
            cross = torch.einsum("bj,bji->bi", yx, ux) + torch.einsum("bj,bji->bi", yy, uy)
            i_ss = sums["mm"] - (vp * zav + v1 * zbv).sum(1)
            coupling = cross[:, :, None] * cross[:, None, :] / i_ss.clamp_min(1e-12)[:, None, None]
            hess = hess - coupling
            if reported:
                info = info - coupling
        step = _scaled_solve(hess, grad, eye)
        if settle > 0 and it > last_gather:
            moving = moving & (torch.einsum("bi,bij,bj->b", step, info, step) >= settle * settle)
            step = step * moving[:, None]
        origin = origin + step[:, :2].clamp(-2.0, 2.0)
        A = A + step[:, 2:].clamp(-0.05, 0.05).reshape(B, 2, 2)
    chi2 = (w * res * res).sum((1, 2))
    n_lin = on.sum(1) * (2 if local_background else 1) + (0 if bg is None else 1)
    dof = w0.sum((1, 2)) - n_lin - 6
    disk_information = (sxx + syy) * (gx * gx + gy * gy)
    return dict(origin=origin, A=A, information=info, amplitudes=a, offsets=b, background=s, on=on, chi2=chi2,
                dof=dof, disk_information=disk_information, start=start)


def fit_central_beam(images: torch.Tensor, origin: torch.Tensor, disk: torch.Tensor, disk_dr: float, radius: float,
                     *, iterations: int = 3, fit=fit_disk_lattice) -> torch.Tensor:
    """Central-beam positions ``(B, 2)``: a likelihood fit of the central disk
    alone (profile ``disk``, its row 0 if it has several) from ``origin``
    (B, 2), windows gathered again at every step. The bright central beam
    pins the origin to a few thousandths of a pixel, so lattice searches
    and fits can start from it. ``fit``: :func:`fit_disk_lattice`, or the
    same compiled."""
    disk = disk[0] if disk.dim() == 2 else disk
    eye = torch.eye(2, dtype=images.dtype, device=images.device).expand(len(images), 2, 2)
    out = fit(images, origin, eye, torch.zeros(0, 2, dtype=images.dtype, device=images.device), disk,
              disk_dr, radius, band=profile_band(disk, disk_dr), iterations=iterations,
              regather=tuple(range(iterations)))
    return out["origin"]


CENTROID_RING = (3.0, 5.0)  # px beyond the disk edge: the ring a disk's local background plane is fitted to


def centroid_offsets(images: torch.Tensor, centers: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each whole disk's intensity centroid relative to ``centers``.

    Within ``radius + 2`` px of the centre, after a plane fitted by least
    squares to the ring :data:`CENTROID_RING` px beyond the edge is taken
    off (a diffuse background's slope would pull the centroid). Unlike a
    fit of the disk's edge, the first moment follows the probe-weighted
    lattice when the lattice varies within the probe and reshapes the disk.

    Parameters
    ----------
    images : (B, Qy, Qx) counts
    centers : (B, J, 2) ``(x, y)`` px, e.g. a fitted lattice's disk centres
    radius : disk radius, px

    Returns
    -------
    offsets : (B, J, 2) centroid minus centre, px; NaN where the window
        leaves the detector, holds no counts above the plane, or the
        centroid lies a pixel or more away
    variance : (B, J) Poisson variance of each offset component, px^2
    """
    off = window_offsets(radius + CENTROID_RING[1], 0.0, images.device)
    vals, px, py, inside = gather_windows(images, centers, off)
    dx, dy = px - centers[..., :1], py - centers[..., 1:]
    r2 = dx * dx + dy * dy
    ring = ((r2 > (radius + CENTROID_RING[0]) ** 2) & (r2 <= (radius + CENTROID_RING[1]) ** 2)).to(vals.dtype)
    # The plane b0 + b1 dx + b2 dy: normal equations from sums over the ring, solved in closed form
    # (torch.linalg.solve on the 3x3 systems made the centroid pass 1.8x slower).
    s = lambda t: (ring * t).sum(-1)  # noqa: E731
    n, sx, sy, sxx, sxy, syy = s(1.0), s(dx), s(dy), s(dx * dx), s(dx * dy), s(dy * dy)
    v, vx, vy = s(vals), s(vals * dx), s(vals * dy)
    c11, c12, c13 = syy * sxx - sxy * sxy, sxy * sy - sx * syy, sx * sxy - sxx * sy
    c22, c23, c33 = n * syy - sy * sy, sx * sy - n * sxy, n * sxx - sx * sx
    det = n * c11 + sx * c12 + sy * c13
    det = torch.where(det.abs() > 0, det, torch.ones_like(det))
    b0 = (c11 * v + c12 * vx + c13 * vy) / det
    b1 = (c12 * v + c22 * vx + c23 * vy) / det
    b2 = (c13 * v + c23 * vx + c33 * vy) / det
    disk = (r2 <= (radius + 2) ** 2).to(vals.dtype)
    signal = (vals - b0[..., None] - b1[..., None] * dx - b2[..., None] * dy) * disk
    total = signal.sum(-1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    offsets = torch.stack([(signal * dx).sum(-1) / safe, (signal * dy).sum(-1) / safe], -1)
    spread = ((dx - offsets[..., :1]) ** 2 + (dy - offsets[..., 1:]) ** 2) / 2
    variance = (vals.clamp_min(0) * disk * spread).sum(-1) / safe**2
    ok = (inside.amin(-1) > 0) & (total > 0) & (offsets.norm(dim=-1) < 1.0)
    return torch.where(ok[..., None], offsets, torch.nan), torch.where(ok, variance, torch.nan)


def orientation_search(
    images: torch.Tensor,
    origin: torch.Tensor,
    reflections: torch.Tensor,
    weights: torch.Tensor,
    shells: torch.Tensor,
    radius: float,
    *,
    max_turn: float = math.pi,
    n_angles: int = 720,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane rotation that best lays a lattice's disks onto each pattern.

    For every shell of reflections (same ``|g|``) the pattern is sampled on
    rings at the shell's radius (and half a disk radius either side),
    smoothed over the disk's angular width and, minus its mean, circularly
    cross-correlated with the shell's reflections weighted by their expected
    strength (a matched filter that uses every shell, not only the first,
    whose disks in a monolayer are the weakest). The correlations of all
    shells add up; the best turn within ``max_turn`` is refined by a
    parabola. Cheap (one FFT per shell and pattern) and robust at doses where
    no single disk stands out.

    Parameters
    ----------
    images : (B, H, W)
    origin : (B, 2) central-beam positions
    reflections : (B, J, 2) reflections as currently transformed (pixels)
    weights : (J,) or (B, J) expected strength of each reflection (0 to skip)
    shells : (J,) int shell index of each reflection (reflections of one
        shell share ``|g|`` in the base)
    radius : disk radius, pixels
    max_turn : largest turn considered, radians
    n_angles : angular samples

    Returns
    -------
    turn : (B,) rotation in radians, positive from +x towards +y, that best
        maps the reflections onto the pattern
    score : (B,) the matched-filter response at that turn relative to no
        turn (0 where no turn helps; larger is more decisive)
    """
    B, H, W = images.shape
    dt, dev = images.dtype, images.device
    t = torch.arange(n_angles, dtype=dt, device=dev) * (2 * math.pi / n_angles)
    ring = torch.stack([torch.cos(t), torch.sin(t)], -1)  # (T, 2)
    w = weights.expand(B, -1) if weights.dim() == 1 else weights
    lengths = reflections.norm(dim=-1)  # (B, J)
    angles = torch.atan2(reflections[..., 1], reflections[..., 0])
    corr = torch.zeros(B, n_angles, dtype=dt, device=dev)
    for s in torch.unique(shells).tolist():
        sel = shells == s
        rho = lengths[:, sel].mean(1)  # (B,)
        edge = torch.minimum(torch.minimum(origin[:, 0], W - 1 - origin[:, 0]),
                             torch.minimum(origin[:, 1], H - 1 - origin[:, 1]))
        usable = (rho + radius < edge).to(dt)  # whole ring on the detector
        if not bool(usable.any()):
            continue
        radii = rho[:, None] + torch.tensor([-0.5, 0.0, 0.5], dtype=dt, device=dev) * radius  # (B, 3)
        pts = origin[:, None, None] + radii[:, :, None, None] * ring  # (B, 3, T, 2)
        prof = sample_bilinear(images, pts).mean(1)  # (B, T)
        prof = prof - prof.mean(-1, keepdim=True)
        # Disks span about +-radius/rho: a wrapped triangle of that width
        # smooths the profile and places each reflection's weight.
        half = (radius / rho)[:, None, None]
        diff = torch.remainder(t[None, None] - angles[:, sel, None] + math.pi, 2 * math.pi) - math.pi  # (B, Js, T)
        tmpl = (w[:, sel, None] * (1 - diff.abs() / half).clamp_min(0)).sum(1)
        tmpl = tmpl - tmpl.mean(-1, keepdim=True)
        corr = corr + usable[:, None] * torch.fft.irfft(torch.fft.rfft(prof) * torch.conj(torch.fft.rfft(tmpl)),
                                                        n=n_angles)
    turns = torch.remainder(t + math.pi, 2 * math.pi) - math.pi
    allowed = turns.abs() <= max_turn + 1e-9
    i = torch.where(allowed, corr, torch.full_like(corr, -float("inf"))).argmax(-1)
    cm = corr.gather(1, ((i - 1) % n_angles)[:, None])[:, 0]
    c0 = corr.gather(1, i[:, None])[:, 0]
    cp = corr.gather(1, ((i + 1) % n_angles)[:, None])[:, 0]
    den = cm - 2 * c0 + cp
    frac = torch.where(den < 0, 0.5 * (cm - cp) / torch.where(den < 0, den, -torch.ones_like(den)), torch.zeros_like(den))
    turn = turns[i] + frac.clamp(-0.5, 0.5) * (2 * math.pi / n_angles)
    score = (c0 - corr[:, 0]) / c0.abs().clamp_min(1e-12)
    return turn, score
