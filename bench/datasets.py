"""Benchmark data: multislice (abTEM) monolayers, cached, and noise applied per case.

The multislice patterns are expensive (minutes on 2 cores), so their
noise-free expected values are simulated once per structure and kept in
``bench/_work``; each benchmark case then adds its own background and
Poisson dose with :func:`stemae.simulate.diffraction.detector_counts`, as the
simulator itself would.

    python bench/datasets.py            # build the cache (all structures)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from stemae.simulate.diffraction import SimulatedDatacube, detector_counts
from stemae.simulate.multislice import monolayer_heterostructure, monolayer_polycrystal

WORK = Path(__file__).resolve().parent / "_work"
STRUCTURES = {
    "ms-hetero": (monolayer_heterostructure, dict(descan=0.0)),
    "ms-hetero-descan": (monolayer_heterostructure, dict(descan=4.0)),
    "ms-poly": (monolayer_polycrystal, dict(descan=0.0)),
}


def expected(name: str) -> SimulatedDatacube:
    """Noise-free multislice datacube ``name`` (a key of ``STRUCTURES``), from
    the cache or simulated (and cached) now."""
    path = WORK / f"{name}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        truth = {k[6:]: z[k] for k in z.files if k.startswith("truth_")}
        from stemae.data.calibration import Calibration
        from stemae.simulate import WS2, WSE2

        return SimulatedDatacube(z["data"], truth, [WS2, WSE2], Calibration(**meta["calibration"]), meta["radius"],
                                 meta["params"])
    make, kw = STRUCTURES[name]
    t = time.perf_counter()
    sim = make(dose=None, background=0.0, **kw)
    print(f"simulated {name} {sim.data.shape} in {time.perf_counter() - t:.0f} s", flush=True)
    WORK.mkdir(exist_ok=True)
    meta = dict(calibration=dataclasses.asdict(sim.calibration), radius=sim.radius, params=sim.params)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, data=sim.data, meta=json.dumps(meta), **{f"truth_{k}": v for k, v in sim.truth.items()})
    tmp.rename(path)
    return sim


def with_noise(sim: SimulatedDatacube, dose: float, background: float, seed: int) -> SimulatedDatacube:
    """A copy of a noise-free datacube with a diffuse background and Poisson noise."""
    Ry, Rx, Qy, Qx = sim.data.shape
    rng = np.random.default_rng(seed)
    flat = sim.data.reshape(-1, Qy, Qx)
    origins = sim.truth["origin"].reshape(-1, 2)
    out = np.empty_like(flat)
    for i in range(0, len(flat), 256):
        out[i : i + 256] = detector_counts(flat[i : i + 256], origins[i : i + 256], background,
                                           sim.params["background_width_px"], dose, rng)
    params = dict(sim.params, dose=dose, background=background, seed=seed)
    return dataclasses.replace(sim, data=out.reshape(Ry, Rx, Qy, Qx), params=params)


if __name__ == "__main__":
    for name in STRUCTURES:
        expected(name)
