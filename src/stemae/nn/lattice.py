"""Disk lattices in PyTorch: windows, rendering and per-pattern refinement.

A pattern is modelled as disks of one shape (the probe aperture image) at
``c_j = o + A g_j``: ``o`` the central-beam position, ``A`` the 2x2
transform of the pattern relative to a base lattice whose reflections are
``g_j`` (pixels, ``(x, y)``). The transform moves disk *centres* only; disks
keep their size, as on a real crystal. All functions are batched over
patterns ``B`` and reflections ``J``.
"""

from __future__ import annotations

import math

import torch


def disk_profile(r: torch.Tensor, radius, edge) -> torch.Tensor:
    """Soft-edged disk value at distance ``r`` (pixels): ``erfc((r - R) / (sqrt2 s)) / 2``."""
    return 0.5 * torch.erfc((r - radius) / (math.sqrt(2.0) * edge))


def disk_profile_slope(r: torch.Tensor, radius, edge) -> torch.Tensor:
    """Derivative of :func:`disk_profile` with respect to ``r``."""
    return -torch.exp(-0.5 * ((r - radius) / edge) ** 2) / (math.sqrt(2.0 * math.pi) * edge)


def ring_offsets(radius: float, edge: float, device=None) -> torch.Tensor:
    """Integer offsets ``(P, 2)`` ``(x, y)`` covering a disk's edge band.

    The band ``| |d| - R | <= 3 s + 1`` around a centre anywhere within half
    a pixel of the origin: where a disk's position information lies, plus
    some inside and outside for its amplitude and local background.
    """
    h = int(math.ceil(radius + 3.0 * edge + 1.0))
    off = torch.arange(-h, h + 1, device=device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    rr = torch.hypot(ox.float(), oy.float())
    keep = (rr - radius).abs() <= 3.0 * edge + 1.0
    return torch.stack([ox[keep], oy[keep]], -1)


def gather_windows(images: torch.Tensor, centers: torch.Tensor, offsets: torch.Tensor):
    """Pixels at integer offsets around disk centres.

    Parameters
    ----------
    images : (B, H, W)
    centers : (B, J, 2) ``(x, y)`` pixels
    offsets : (P, 2) integer ``(x, y)`` offsets from the rounded centre

    Returns
    -------
    values : (B, J, P) pixel values (0 outside the detector)
    coords : (B, J, P, 2) pixel coordinates ``(x, y)``
    inside : (B, J, P) bool, pixel on the detector
    """
    B, H, W = images.shape
    base = torch.round(centers).long()
    px = base[..., 0, None] + offsets[:, 0]
    py = base[..., 1, None] + offsets[:, 1]
    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    flat = (torch.arange(B, device=images.device)[:, None, None] * H + py.clamp(0, H - 1)) * W + px.clamp(0, W - 1)
    values = images.reshape(-1)[flat] * inside
    coords = torch.stack([px, py], -1).to(images.dtype)
    return values, coords, inside


def fit_amplitudes(values, profile, weights):
    """Per-window weighted least squares ``values ~ a * profile + c``.

    Shapes ``(B, J, P)``; returns ``a``, ``c`` of shape ``(B, J)``.
    """
    s_w = weights.sum(-1)
    s_d = (weights * profile).sum(-1)
    s_dd = (weights * profile * profile).sum(-1)
    s_v = (weights * values).sum(-1)
    s_dv = (weights * profile * values).sum(-1)
    det = (s_dd * s_w - s_d * s_d).clamp_min(1e-12)
    a = (s_dv * s_w - s_d * s_v) / det
    c = (s_dd * s_v - s_d * s_dv) / det
    return a, c


def refine_lattice(
    images: torch.Tensor,
    origin: torch.Tensor,
    A: torch.Tensor,
    reflections: torch.Tensor,
    radius: float,
    edge: float,
    *,
    iterations: int = 4,
    use_central: bool = True,
    noise_floor: float = 1.0,
):
    """Gauss-Newton fit of origin and transform to each pattern's disks.

    Each iteration gathers a window around every predicted disk centre, fits
    each disk's amplitude and local background linearly, then takes one
    weighted Gauss-Newton step (weights ``1 / (model + noise_floor)``, the
    Poisson variance) on the six geometric parameters. Disk shapes stay
    fixed, so the strain is not biased by disk size.

    Parameters
    ----------
    images : (B, H, W) detector counts
    origin : (B, 2) initial central-beam positions ``(x, y)``
    A : (B, 2, 2) initial transforms of the base reflections
    reflections : (J, 2) or (B, J, 2) base reflection vectors ``g_j`` (pixels)
    radius, edge : disk radius and edge blur, pixels
    iterations : Gauss-Newton steps (at least 1)
    use_central : include the central beam (constrains the origin only)
    noise_floor : added to the model in the weights (counts)

    Returns
    -------
    origin : (B, 2); A : (B, 2, 2); rms : (B,) weighted RMS residual;
    n_disks : (B,) reflections whose window lay on the detector;
    chi2 : (B,) weighted sum of squared residuals (Poisson chi-square)
    """
    B, H, W = images.shape
    g = reflections.expand(B, -1, -1) if reflections.dim() == 2 else reflections
    g = torch.cat([torch.zeros_like(g[:, :1]), g], 1)  # the central beam is g = 0
    offsets = ring_offsets(radius, edge, images.device)
    origin, A = origin.clone(), A.clone()
    eye = torch.eye(6, dtype=images.dtype, device=images.device)
    # One pixel set (and so one set of values) for all iterations, so that
    # the iterations converge.
    vals, coords, inside = gather_windows(images, origin[:, None] + g @ A.transpose(-1, -2), offsets)
    for it in range(iterations):
        centers = origin[:, None] + g @ A.transpose(-1, -2)  # (B, J, 2)
        # Disks whose centre is at least a radius inside the detector; pixels
        # of their windows that fall off it get no weight.
        on = ((centers[..., 0] >= radius) & (centers[..., 0] <= W - 1 - radius)
              & (centers[..., 1] >= radius) & (centers[..., 1] <= H - 1 - radius))
        if not use_central:
            on[:, 0] = False
        dx = coords[..., 0] - centers[..., 0, None]
        dy = coords[..., 1] - centers[..., 1, None]
        r = torch.sqrt(dx * dx + dy * dy).clamp_min(1e-6)
        prof = disk_profile(r, radius, edge)
        w0 = (on[..., None] & inside).to(images.dtype)
        a, c = fit_amplitudes(vals, prof, w0)
        model = a[..., None] * prof + c[..., None]
        w = w0 / (model.clamp_min(0) + noise_floor)
        res = vals - model
        # dM/dc = -q d with q = a D'(r) / r: per-disk sums, then the 6x6 system.
        q = a[..., None] * disk_profile_slope(r, radius, edge) / r
        k = w * q * q
        sxx, sxy, syy = (k * dx * dx).sum(-1), (k * dx * dy).sum(-1), (k * dy * dy).sum(-1)
        kr = -w * q * res
        tx, ty = (kr * dx).sum(-1), (kr * dy).sum(-1)
        gx, gy = g[..., 0], g[..., 1]
        # Parameter order: ox, oy, A00, A01, A10, A11; dc_x/dA0j = g_j, dc_y/dA1j = g_j.
        ux = torch.stack([torch.ones_like(gx), torch.zeros_like(gx), gx, gy, torch.zeros_like(gx), torch.zeros_like(gx)], -1)
        uy = torch.stack([torch.zeros_like(gx), torch.ones_like(gx), torch.zeros_like(gx), torch.zeros_like(gx), gx, gy], -1)
        hess = (torch.einsum("bj,bji,bjk->bik", sxx, ux, ux) + torch.einsum("bj,bji,bjk->bik", sxy, ux, uy)
                + torch.einsum("bj,bji,bjk->bik", sxy, uy, ux) + torch.einsum("bj,bji,bjk->bik", syy, uy, uy))
        grad = torch.einsum("bj,bji->bi", tx, ux) + torch.einsum("bj,bji->bi", ty, uy)
        hess = hess + 1e-6 * torch.diagonal(hess, dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye
        step = torch.linalg.solve(hess, grad)
        origin = origin + step[:, :2].clamp(-2.0, 2.0)
        A = A + step[:, 2:].clamp(-0.05, 0.05).reshape(B, 2, 2)
    # Residual of the last linearisation point (one step before the returned fit).
    chi2 = (w * res * res).sum((1, 2))
    rms = torch.sqrt(chi2 / w.sum((1, 2)).clamp_min(1e-12))
    return origin, A, rms, on[:, 1:].sum(1), chi2


def sample_bilinear(images: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``images`` (B, H, W) at ``xy`` (B, ..., 2) ``(x, y)``
    pixel coordinates; zero outside. Differentiable in both arguments."""
    B, H, W = images.shape
    shape = xy.shape[1:-1]
    pts = xy.reshape(B, -1, 1, 2)
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], dtype=xy.dtype, device=xy.device)
    grid = pts * scale - 1.0
    out = torch.nn.functional.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=True)
    return out.reshape((B,) + shape)


def ring_rotation(images: torch.Tensor, origin: torch.Tensor, reflections: torch.Tensor, radius: float,
                  n_angles: int = 180) -> torch.Tensor:
    """In-plane rotation of each pattern's first reflection ring against a base.

    The intensity on the ring of the base's shortest reflections (sampled on
    three radii, +-3 %, so moderate strain does not matter) is circularly
    cross-correlated with the base's own ring, drawn as bumps of the disk's
    angular width at its reflections' angles. Robust, cheap (one FFT per
    pattern) and good to about a degree: enough to start
    :func:`refine_lattice` in any grain orientation.

    Parameters
    ----------
    images : (B, H, W)
    origin : (B, 2) central-beam positions
    reflections : (B, J, 2) base reflections as currently transformed
    radius : disk radius in pixels

    Returns
    -------
    turn : (B,) rotation in radians, positive from +x towards +y, that best
        maps the transformed base ring onto the pattern's ring (modulo the
        ring's symmetry).
    gain : (B,) how much better the ring matches after the turn than before,
        relative to the best match (0: no better; near 1: it did not match
        at all before). Noise moves the peak a little but gains little.
    """
    B = images.shape[0]
    t = torch.arange(n_angles, dtype=images.dtype, device=images.device) * (2 * math.pi / n_angles)
    lengths = reflections.norm(dim=-1)  # (B, J)
    rho = lengths.min(dim=1).values  # (B,)
    ring = torch.stack([torch.cos(t), torch.sin(t)], -1)  # (T, 2)
    pts = origin[:, None, None] + (rho[:, None, None, None] * torch.tensor([0.97, 1.0, 1.03], dtype=images.dtype,
                                                                        device=images.device)[None, :, None, None]) * ring
    prof = sample_bilinear(images, pts).mean(1)  # (B, T)
    prof = prof - prof.mean(-1, keepdim=True)
    ang = torch.atan2(reflections[..., 1], reflections[..., 0])  # (B, J)
    on_ring = (lengths <= 1.05 * rho[:, None]).to(images.dtype)
    width = (radius / rho)[:, None, None]
    diff = torch.remainder(t[None, None] - ang[..., None] + math.pi, 2 * math.pi) - math.pi  # (B, J, T)
    base = (on_ring[..., None] * torch.exp(-0.5 * (diff / (0.6 * width)) ** 2)).sum(1)
    base = base - base.mean(-1, keepdim=True)
    corr = torch.fft.irfft(torch.fft.rfft(prof) * torch.conj(torch.fft.rfft(base)), n=n_angles)
    i = corr.argmax(-1)
    # Parabolic refinement of the circular peak.
    cm = corr.gather(1, ((i - 1) % n_angles)[:, None])[:, 0]
    c0 = corr.gather(1, i[:, None])[:, 0]
    cp = corr.gather(1, ((i + 1) % n_angles)[:, None])[:, 0]
    den = cm - 2 * c0 + cp
    frac = torch.where(den < 0, 0.5 * (cm - cp) / torch.where(den < 0, den, -torch.ones_like(den)), torch.zeros_like(den))
    shift = (i.to(images.dtype) + frac.clamp(-0.5, 0.5)) * (2 * math.pi / n_angles)
    gain = (c0 - corr[:, 0]) / c0.abs().clamp_min(1e-12)
    return torch.remainder(shift + math.pi, 2 * math.pi) - math.pi, gain
