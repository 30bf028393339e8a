"""Affine transforms for spatial transformers: parameters <-> matrices.

One composed matrix per sample, built with explicit arithmetic (no
``F.affine_grid``) so models stay exportable. Conventions follow
:mod:`stemae.geometry`: vectors ``(x, y)``, positive rotation from ``+x``
towards ``+y``.

Parameters (last axis, in this order): ``log_sx``, ``log_sy`` (log scales
along x and y), ``shear`` (symmetric, tensor), ``rotation`` (radians), ``tx``,
``ty`` (translation, pixels). The 2x2 part is ``A = R(rotation) S`` with the
symmetric stretch ``S = [[exp(log_sx), shear], [shear, exp(log_sy)]]``, which
is exactly the ``F = R U`` polar form used for strain.
"""

from __future__ import annotations

import torch

N_PARAMS = 6


def affine_matrix(params: torch.Tensor) -> torch.Tensor:
    """Matrices ``(..., 2, 3)`` ``[A | t]`` from parameters ``(..., 6)``."""
    lsx, lsy, sh, rot, tx, ty = params.unbind(-1)
    c, s = torch.cos(rot), torch.sin(rot)
    sx, sy = torch.exp(lsx), torch.exp(lsy)
    a00 = c * sx - s * sh
    a01 = c * sh - s * sy
    a10 = s * sx + c * sh
    a11 = s * sh + c * sy
    row0 = torch.stack([a00, a01, tx], -1)
    row1 = torch.stack([a10, a11, ty], -1)
    return torch.stack([row0, row1], -2)


def invert_affine(M: torch.Tensor) -> torch.Tensor:
    """Inverse of affine maps ``(..., 2, 3)``: ``x = A y + t  ->  y = A^-1 (x - t)``."""
    A, t = M[..., :2], M[..., 2:]
    Ai = torch.linalg.inv(A)
    return torch.cat([Ai, -Ai @ t], -1)


def apply_affine(M: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points ``(..., N, 2)`` by ``M`` ``(..., 2, 3)``: ``A p + t``."""
    return points @ M[..., :2].transpose(-1, -2) + M[..., 2].unsqueeze(-2)
