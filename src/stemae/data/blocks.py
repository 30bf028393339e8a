"""Reading patterns from a datacube: block sizes, single patterns, finiteness checks."""

from __future__ import annotations

import numpy as np

from stemae.errors import InputError


def not_finite_message(row, col) -> str:
    """What stemae says of a pattern holding NaN or Inf at scan position (row, col)."""
    return f"the pattern at scan position (row {row}, col {col}) contains NaN or Inf; stemae needs finite detector values"


def rows_for_budget(data_shape, budget_bytes: int = 64 * 2**20) -> int:
    """Scan rows per block so that one float32 block stays near ``budget_bytes``."""
    row_bytes = int(np.prod(data_shape[1:])) * 4
    return int(max(1, min(data_shape[0], budget_bytes // max(row_bytes, 1))))


def read_patterns(data, rows, cols) -> np.ndarray:
    """Patterns at scan positions ``(rows[i], cols[i])`` as float32 ``(N, Qy, Qx)``;
    a pattern with NaN or Inf raises :class:`InputError` naming its position."""
    out = np.stack([np.asarray(data[int(r), int(c)], dtype=np.float32) for r, c in zip(rows, cols)])
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(not_finite_message(int(rows[i]), int(cols[i])))
    return out
