"""One runner for every method's per-batch step: in process or on Dask, out
of core, resumable.

A *step* is the per-batch work of a method with its small saved state (a
trained bundle, a fitted classical state), in the manner of a LiberTEM UDF:
it declares its results up front and maps a batch of items (patterns
``(B, Qy, Qx)`` or images ``(B, H, W)``) to them, knowing nothing of the
rest of the scan or of where it runs. A step is any object with

- ``signal_ndim`` (int): trailing axes of one item (2);
- ``results()``: ``{name: (shape, dtype, kind)}``, ``kind`` ``"nav"`` for
  one value of ``shape`` per item, ``"sum"`` or ``"max"`` for one value of
  ``shape`` per batch merged over the scan by that operation;
- ``__call__(batch)``: ``{name: array}``, ``(B, *shape)`` for ``"nav"``
  results, ``shape`` for merged ones.

:func:`run` maps a step over blocks of whole leading (scan-row) slices, in
process or as one task per block on a ``dask.distributed`` cluster whose
workers read their own blocks. With a ``store`` it writes every block's
results into a zarr store (version 2 format) as the block finishes and marks
the block done; a run started again with the same store and fingerprint
continues from the blocks already written and ends with the same numbers as
an uninterrupted run (blocks are the same, and merged results are combined
in block order at the end). Such a store is a scratch store of kind
``stemae-partial``: :func:`stemae.data.results.read_results` refuses it, and
the pipelines remove it once their results store is written.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from stemae.data.blocks import not_finite_message, rows_for_budget
from stemae.data.results import PARTIAL_KIND, store_kind
from stemae.errors import InputError

MERGES = {"sum": np.add, "max": np.maximum}


def _check_step(step, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The leading (navigation) shape of ``data`` for ``step``."""
    nav = tuple(shape[: len(shape) - step.signal_ndim])
    if len(nav) not in (1, 2):
        raise InputError(f"data of shape {shape}: expected one or two scan axes before "
                         f"{step.signal_ndim} signal axes")
    for name, (_, _, kind) in step.results().items():
        if kind not in ("nav", *MERGES):
            raise ValueError(f"result {name!r}: unknown kind {kind!r}")
    return nav


def read_block(data, r0: int, r1: int) -> np.ndarray:
    """Scan rows ``r0:r1`` of ``data`` as float32, checked by :func:`check_finite`."""
    return check_finite(np.asarray(data[r0:r1], dtype=np.float32), r0)


def check_finite(block: np.ndarray, r0: int) -> np.ndarray:
    """``block`` (rows of patterns ``(rows, Rx, Qy, Qx)`` or of images
    ``(frames, H, W)``) unchanged; NaN or Inf raises :class:`InputError`
    naming the first bad scan position or frame (``r0`` the block's first row)."""
    bad = ~np.isfinite(block).all(axis=(-2, -1))
    if bad.any():
        where = np.argwhere(bad)[0]
        if block.ndim == 4:
            raise InputError(not_finite_message(r0 + where[0], where[1]))
        raise InputError(f"frame {r0 + where[0]} contains NaN or Inf; stemae needs finite values")
    return block


def apply_block(step, block: np.ndarray) -> dict[str, np.ndarray]:
    """``step`` on one block ``(rows, [Rx,] *signal)``: its ``"nav"``
    results shaped ``(rows, [Rx,] *shape)``, merged ones as the step gives them."""
    nav = block.shape[: block.ndim - step.signal_ndim]
    out = step(block.reshape((-1,) + block.shape[len(nav):]))
    spec = step.results()
    return {k: (np.asarray(v).reshape(nav + tuple(spec[k][0])) if spec[k][2] == "nav" else np.asarray(v))
            for k, v in out.items()}


def _layout(step, nav, rows) -> dict:
    return {"nav": list(nav), "rows": int(rows),
            "results": {k: [list(map(int, s)), np.dtype(d).str, kind] for k, (s, d, kind) in step.results().items()}}


def _buffers(step, nav, rows: int) -> dict[str, tuple[tuple, tuple, str]]:
    """Every result's buffer as ``(shape, chunks, dtype)``: ``"nav"``
    results over the scan, chunked by block; merged ones one row per block
    (combined in block order at the end); and ``done``, one mark per block."""
    n_blocks = math.ceil(nav[0] / rows)
    out = {}
    for name, (shape, dtype, kind) in step.results().items():
        lead, chunk = ((tuple(nav), (rows,) + tuple(nav[1:])) if kind == "nav" else ((n_blocks,), (1,)))
        out[name] = (lead + tuple(shape), chunk + tuple(shape), dtype)
    out["done"] = ((n_blocks,), (1,), "u1")
    return out


def open_partial(path, step, nav, rows: int, fingerprint: dict):
    """The partial store at ``path`` for this run (a zarr group holding
    :func:`_buffers`): reopened when it belongs to the same run (same
    fingerprint and layout), else made afresh (a partial store of another
    run is replaced; anything else there is refused)."""
    import zarr

    path = Path(path)
    layout = _layout(step, nav, rows)
    if path.exists():
        if store_kind(path) != PARTIAL_KIND:
            raise InputError(f"{path} exists and is not a stemae partial store; refusing to overwrite it")
        old = zarr.open_group(str(path), mode="r+")
        if old.attrs.get("fingerprint") == _canonical(fingerprint) and old.attrs.get("layout") == layout:
            return old
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update({"kind": PARTIAL_KIND, "fingerprint": _canonical(fingerprint), "layout": layout})
    for name, (shape, chunks, dtype) in _buffers(step, nav, rows).items():
        root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return root


def _canonical(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def partial_status(path) -> tuple[int, int] | None:
    """``(blocks done, blocks)`` of a partial store at ``path``, None if there is none."""
    import zarr

    if store_kind(Path(path)) != PARTIAL_KIND:
        return None
    try:
        done = np.asarray(zarr.open_group(str(path), mode="r")["done"][...])
    except KeyError:  # a store still being laid out
        return None
    return int(done.sum()), len(done)


def read_partial(path, names) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """What a partial store holds so far: the ``"nav"`` results ``names``
    over the scan and a mask ``(Ry,)`` of the scan rows whose blocks are
    done (their values are final; the others are zeros). None while there
    is no partial store at ``path``."""
    import zarr

    status = partial_status(path)
    if status is None:
        return None
    root = zarr.open_group(str(path), mode="r")
    done = np.asarray(root["done"][...]).astype(bool)
    rows = int(root.attrs["layout"]["rows"])
    arrays = {name: np.asarray(root[name][...]) for name in names}
    mapped = np.repeat(done, rows)[: next(iter(arrays.values())).shape[0]] if arrays else np.repeat(done, rows)
    return arrays, mapped


def _write_block(root, step, i: int, r0: int, out: dict) -> None:
    """One block's results into its buffers (a partial store or arrays in
    memory, see :func:`_buffers`), then its done mark."""
    for name, (_, _, kind) in step.results().items():
        v = out[name]
        if kind == "nav":
            root[name][r0 : r0 + len(v)] = v
        else:
            root[name][i] = v
    root["done"][i] = 1


def _block_task(step, block, i: int, r0: int, store: str | None):
    """What a Dask worker does with one block it was given: check it, map
    it, write it (or return its results when there is no store)."""
    out = apply_block(step, check_finite(np.asarray(block, dtype=np.float32), r0))
    if store is None:
        return out
    import zarr

    _write_block(zarr.open_group(store, mode="r+"), step, i, r0, out)
    return None


def run(step, data, *, store=None, fingerprint: dict | None = None, rows: int | None = None, client=None,
        progress: bool = False, desc: str = "mapping") -> dict[str, np.ndarray]:
    """Map ``step`` over ``data`` in blocks of scan rows.

    Parameters
    ----------
    step : a per-batch step (see the module docstring)
    data : array-like ``(Ry, [Rx,] *signal)`` sliceable along its first
        axis (NumPy, h5py, zarr, Dask, a prepared view); with ``client``
        it must pickle (a zarr array, a NumPy array, a Dask array, or
        :func:`stemae.data.readers.lazy` of a file)
    store : path of a partial store (zarr) that keeps every finished block,
        so an interrupted run resumes; None keeps results in memory only
    fingerprint : what identifies the run (input, method, state, settings);
        a store of another fingerprint is started afresh
    rows : scan rows per block (default about 32 MB of float32 patterns)
    client : a ``dask.distributed.Client``: blocks run as tasks on its
        workers, each reading its own block
    progress : show a progress bar of items mapped

    Returns
    -------
    dict of every result: ``"nav"`` results ``(Ry, [Rx,] *shape)``, merged
    ones combined over all blocks.
    """
    nav = _check_step(step, tuple(data.shape))
    rows = rows or rows_for_budget(data.shape, 32 * 2**20)
    starts = list(range(0, nav[0], rows))
    size = [min(r0 + rows, nav[0]) - r0 for r0 in starts]  # scan rows of each block
    per_row = int(np.prod(nav[1:], dtype=np.int64)) if len(nav) > 1 else 1
    if store is None:
        target = {name: np.zeros(shape, dtype) for name, (shape, _, dtype) in _buffers(step, nav, rows).items()}
    else:
        target = open_partial(store, step, nav, rows, fingerprint or {})
    done = np.asarray(target["done"][...]).astype(bool)
    todo = [int(i) for i in np.flatnonzero(~done)]
    if done.any() and progress:
        tqdm.write(f"resuming: {int(done.sum())} of {len(starts)} blocks were mapped before ({store})")
    bar = tqdm(total=nav[0] * per_row, initial=(nav[0] - sum(size[i] for i in todo)) * per_row,
               unit="pattern" if len(nav) == 2 else "frame", desc=desc, disable=not progress, leave=False)
    if client is None:
        for i in todo:
            _write_block(target, step, i, starts[i], apply_block(step, read_block(data, starts[i], starts[i] + size[i])))
            bar.update(size[i] * per_row)
    else:
        import dask
        import dask.array as da
        from dask.distributed import as_completed

        darr = data if isinstance(data, da.Array) else da.from_array(data, chunks=(rows,) + tuple(data.shape[1:]))
        blocks = darr.rechunk((rows,) + tuple(data.shape[1:])).to_delayed().ravel()
        [step_f] = client.scatter([step], broadcast=True)
        task = dask.delayed(_block_task, pure=False)
        futures = client.compute([task(step_f, blocks[i], i, starts[i], None if store is None else str(store))
                                  for i in todo])
        block_of = {f.key: i for f, i in zip(futures, todo)}
        for fut in as_completed(futures):
            i = block_of[fut.key]
            if store is None:  # the worker returned its results
                _write_block(target, step, i, starts[i], fut.result())
            else:
                fut.result()  # raises the worker's error
            bar.update(size[i] * per_row)
    bar.close()
    return {name: (np.asarray(target[name][...]) if kind == "nav" else MERGES[kind].reduce(target[name][...], axis=0))
            for name, (_, _, kind) in step.results().items()}


def remove_partial(path) -> None:
    """Delete a partial store once its run's results are written."""
    path = Path(path)
    if partial_status(path) is not None:
        shutil.rmtree(path, ignore_errors=True)
