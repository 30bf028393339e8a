"""The runner out of core and on Dask: peak memory as the data on disk grows,
and throughput of two local Dask workers against one and against the
in-process runner, in one run on the same data.

Data: the built-in simulator's 128x128 WS2/WSe2 patterns (1e5 electrons),
tiled along the scan rows into zarr datacubes of the sizes given; method
xcorr (its per-batch step: disk detection and lattice fits). The in-process
runner uses this process's threads (NumPy's FFTs are single-threaded);
every Dask worker is a process with one thread (Dask sets the BLAS and
OpenMP threads of its workers to one).

    python bench/bench_runner.py                 # 0.5 GB against 2 GB
    python bench/bench_runner.py --sizes 1 8     # GB
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).parent
WORK = HERE / "_work" / "runner"


def make_cube(gb: float) -> Path:
    """A zarr datacube of about ``gb`` GB (float32), cached in bench/_work."""
    import zarr

    from stemae.simulate import heterostructure

    path = WORK / f"cube-{gb:g}GB.zarr"
    if path.exists():
        return path
    sim = heterostructure((8, 64), (128, 128), dose=1e5, seed=5)
    tiles = max(1, round(gb * 2**30 / sim.data.nbytes))
    tmp = path.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    z = zarr.open_array(str(tmp), mode="w", shape=(8 * tiles, 64, 128, 128), chunks=(2, 64, 128, 128), dtype="f4",
                        zarr_format=2)
    for t in range(tiles):
        z[8 * t : 8 * (t + 1)] = sim.data
    tmp.rename(path)
    return path


CHILD = """
import resource, sys, time, json
import numpy as np, zarr
from stemae.strain import classical, map_strain
z = zarr.open_array(sys.argv[1], mode="r")
ref = np.zeros(z.shape[:2], bool); ref[:8, :8] = True
state = classical.fit_state(z[:8], reference=ref[:8])
workers = int(sys.argv[2])
t = time.perf_counter()
if workers:
    import distributed
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c, distributed.Client(c) as client:
        t = time.perf_counter()
        res = map_strain(z, reference=ref, state=state, client=client)
else:
    res = map_strain(z, reference=ref, state=state)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "patterns": int(np.prod(z.shape[:2])),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "valid": float(res["valid"].mean())}))
"""


def measure(path: Path, workers: int) -> dict:
    import json

    r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(workers)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs=2, default=(0.5, 2.0), metavar="GB")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    small, large = (make_cube(g) for g in args.sizes)
    mem = {g: measure(p, 0) for g, p in zip(args.sizes, (small, large))}
    speed = {w: measure(small, w) for w in (0, 1, 2)}
    rate = {w: m["patterns"] / m["seconds"] for w, m in speed.items()}
    a, b = args.sizes
    print(f"peak memory of the in-process runner (xcorr): {mem[a]['peak_rss_mb']:.0f} MB on {a:g} GB, "
          f"{mem[b]['peak_rss_mb']:.0f} MB on {b:g} GB (ratio {mem[b]['peak_rss_mb'] / mem[a]['peak_rss_mb']:.2f} "
          f"for {b / a:g}x the data)")
    print(f"throughput on {a:g} GB ({speed[0]['patterns']} patterns), patterns/s: in process {rate[0]:.0f}, "
          f"one Dask worker {rate[1]:.0f}, two {rate[2]:.0f}; two workers / one {rate[2] / rate[1]:.2f}, "
          f"two workers / in process {rate[2] / rate[0]:.2f}")


if __name__ == "__main__":
    main()
