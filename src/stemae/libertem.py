"""stemae inside LiberTEM: a strain bundle's per-batch step as a LiberTEM UDF.

LiberTEM users run stemae on any LiberTEM dataset (MIB, K2IS, EMPAD, raw,
...) and any LiberTEM executor (inline, threads, its Dask executors)::

    from libertem.api import Context
    from stemae.libertem import StrainUDF, results

    ctx = Context.make_with("dask", cpus=8)
    ds = ctx.load("auto", path="scan.mib")
    res = results(ctx.run_udf(dataset=ds, udf=StrainUDF("OUT/model")))

``results`` gives what :func:`stemae.runner.run` gives for the same step
(``"nav"`` results shaped ``(Ry, Rx, ...)``, merged ones combined), so the
whole-map step follows as in process: for a CC-ST-AE bundle
``ccstae.to_strain(finish_statistics(res), reference)`` (the phase
refit of :func:`stemae.strain.ccstae.predict`, which reads patterns again,
is not part of it), for a classical one the strain of
:func:`stemae.geometry.strain_maps`. Needs the ``libertem`` extra.
"""

from __future__ import annotations

import functools

import numpy as np
from libertem.udf.base import UDF

from stemae.runner import MERGES


@functools.lru_cache(maxsize=4)
def _step(bundle: str, device: str, batch_size: int):
    """The step of a bundle, loaded once per process."""
    from stemae.strain.run import load_step

    return load_step(bundle, device=device, batch_size=batch_size)


class StrainUDF(UDF):
    """The per-batch step of a strain bundle (a trained CC-ST-AE or a
    classical method's state, see :func:`stemae.strain.run.load_step`),
    one LiberTEM partition at a time; its results are LiberTEM buffers of
    the same names (``kind="nav"`` per pattern, ``kind="single"`` for the
    merged pattern sum and maximum).

    Parameters
    ----------
    bundle : path of the bundle folder (every worker must reach it)
    device : torch device of the CC-ST-AE's fits
    batch_size : patterns per fit call
    """

    def __init__(self, bundle, device: str = "cpu", batch_size: int = 256):
        super().__init__(bundle=str(bundle), device=device, batch_size=batch_size)

    def _spec(self) -> dict:
        return _step(self.params.bundle, self.params.device, self.params.batch_size).results()

    def get_result_buffers(self):
        return {name: self.buffer(kind="nav" if kind == "nav" else "single", extra_shape=tuple(shape),
                                  dtype=np.dtype(dtype))
                for name, (shape, dtype, kind) in self._spec().items()}

    def process_partition(self, partition):
        step = _step(self.params.bundle, self.params.device, self.params.batch_size)
        out = step(np.asarray(partition, np.float32))
        for name, value in out.items():
            getattr(self.results, name)[:] = value

    def merge(self, dest, src):
        for name, (_, _, kind) in self._spec().items():
            d, s = getattr(dest, name), getattr(src, name)
            d[:] = s if kind == "nav" else MERGES[kind](d, s)


def results(udf_result: dict) -> dict[str, np.ndarray]:
    """The arrays of a :class:`StrainUDF` run (``ctx.run_udf``'s result)."""
    return {name: np.asarray(buf.data) for name, buf in udf_result.items()}
