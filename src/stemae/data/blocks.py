"""Stream a datacube in blocks of whole scan rows, checking the values."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stemae.errors import InputError


def iter_row_blocks(data, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row0, block)`` with ``block`` float32 ``(rows, Rx, Qy, Qx)``.

    ``data`` is any sliceable array (NumPy, Dask, h5py, zarr). A block with
    NaN or Inf raises :class:`InputError` naming the first bad scan position.
    """
    Ry = data.shape[0]
    for r0 in range(0, Ry, rows_per_block):
        block = np.asarray(data[r0 : r0 + rows_per_block], dtype=np.float32)
        finite = np.isfinite(block).all(axis=(2, 3))
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise InputError(_not_finite(r0 + r, c))
        yield r0, block


def _not_finite(row, col) -> str:
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
        raise InputError(_not_finite(int(rows[i]), int(cols[i])))
    return out
