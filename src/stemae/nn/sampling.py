"""Sampling in PyTorch, batched: radial profile tables (value and slope at any
radius), windows of pixels around points, bilinear samples, and the edge
band of a disk profile where its position information lies."""

from __future__ import annotations

import math

import torch

from stemae.shapes import disk_edge

WING = 3.0  # pixels beyond a disk's half radius that a fit's window reaches at most


def table_lookup(table: torch.Tensor, dr: float, r: torch.Tensor,
                 row: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and slope of a radial profile at distances ``r >= 0`` (pixels).

    ``table`` (n,) holds the profile at ``r = 0, dr, 2 dr, ...``, or (m, n)
    several profiles of which ``row`` (broadcastable to ``r``, int) picks
    one per element; values are interpolated linearly and held constant
    beyond the last sample.
    """
    n = table.shape[-1]
    x = (r * (1.0 / dr)).clamp_(max=n - 1)
    i = x.long().clamp_(max=n - 2)
    f = x - i
    if row is not None:
        i = i + row * n
    flat = table.reshape(-1)
    step = (table[..., 1:] - table[..., :-1]).reshape(-1, n - 1)
    step = torch.cat([step, torch.zeros_like(step[:, :1])], 1).reshape(-1)
    d = step[i]
    return flat[i] + f * d, d * (1.0 / dr)


def erfc_table(radius: float, edge: float, dr: float = 0.05, r_max: float | None = None) -> torch.Tensor:
    """The disk edge :func:`stemae.shapes.disk_edge` as a table (every ``dr`` px from 0)."""
    r_max = radius + 8 * edge + 2 if r_max is None else r_max
    r = torch.arange(0.0, r_max + dr, dr, dtype=torch.float64)
    return torch.as_tensor(disk_edge(r.numpy(), radius, edge)).float()


def window_offsets(outer: float, inner: float = 0.0, device=None, multiple: int = 1) -> torch.Tensor:
    """Integer offsets ``(P, 2)`` ``(x, y)`` of every pixel that can lie between
    ``inner`` and ``outer`` pixels of a centre anywhere within half a pixel
    of the origin (an annulus around a disk's edge, or a whole disk).

    ``multiple``: ``P`` is rounded up to a multiple of it with the nearest
    pixels beyond the annulus (more than ``outer`` from any such centre, so
    a caller's radius test leaves them out). Fused CPU kernels run on
    vectors of 8 float32 (AVX2): windows of a multiple of 8 pixels leave no
    scalar tail in their passes (with AVX-512's 16 lanes, rounding up to 16
    adds more work than the shorter tail saves)."""
    h = int(math.ceil(outer + 1.0)) + 2
    off = torch.arange(-h, h + 1, device=device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    xy = torch.stack([ox.reshape(-1), oy.reshape(-1)], -1)
    rr = torch.hypot(ox.float(), oy.float()).reshape(-1)
    keep = (rr <= outer + 0.75) & (rr >= inner - 0.75)
    # Masks rather than a count taken out of a tensor: the fits call this
    # inside a compiled function, where such a count breaks the graph.
    beyond = rr > outer + 0.75
    nearest = torch.argsort(torch.argsort(torch.where(beyond, rr, torch.inf), stable=True))  # rank by distance
    pad = beyond & (nearest < -keep.sum() % multiple)
    return torch.cat([xy[keep], xy[pad]])


def profile_band(disk: torch.Tensor, dr: float) -> tuple[float, float]:
    """Inner and outer radius (pixels) of a disk profile's edge band: from
    half a pixel inside where, coming from the edge, it reaches 0.98 of its
    plateau to half a pixel beyond where it has fallen to 0.02, or ``WING``
    pixels beyond its half radius if that is nearer. Amplitude, background
    and position of a disk are all measured there (faint wings hold little
    position information and many pixels)."""
    p = disk.double()
    r = torch.arange(p.shape[0], dtype=torch.float64) * dr
    half = int(torch.nonzero(p < 0.5).min())
    plateau = torch.nonzero(p[:half] >= 0.98)
    tail = torch.nonzero(p[half:] <= 0.02)
    inner = r[int(plateau.max())].item() - 0.5 if len(plateau) else 0.0
    outer = r[half + int(tail.min())].item() + 0.5 if len(tail) else r[-1].item()
    return max(inner, 0.0), min(outer, r[half].item() + WING)


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
    x, y : (B, J, P) pixel coordinates
    inside : (B, J, P) pixel on the detector, 1.0 or 0.0
    """
    B, H, W = images.shape
    base = torch.round(centers).long()
    px = base[..., 0, None] + offsets[:, 0]
    py = base[..., 1, None] + offsets[:, 1]
    inside = ((px >= 0) & (px < W) & (py >= 0) & (py < H)).to(images.dtype)
    flat = (torch.arange(B, device=images.device)[:, None, None] * H + py.clamp(0, H - 1)) * W + px.clamp(0, W - 1)
    values = images.reshape(-1)[flat] * inside
    return values, px.to(images.dtype), py.to(images.dtype), inside


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
