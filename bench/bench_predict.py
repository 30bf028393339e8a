"""CC-ST-AE prediction speed with a trained bundle: the fits as they are and
through ``torch.compile``, in memory and from the command line.

Data: the built-in simulator's 128x128 WS2/WSe2 heterostructure patterns at
1e5 electrons (a 64x64 scan, two phases, so every pattern is also tried
against both bases); a CC-ST-AE trained on them for the default three
epochs. In memory: the per-batch step (``PredictStep``) over all 4,096
patterns, plain and compiled alternated ``--repeats`` times after one warm-up
call each (the compiled one's first call compiles; its time is reported
apart, with PyTorch's compile cache empty and again with it filled). From
the command line: ``stemae predict`` on the same scan tiled to
``--tiles`` x 4,096 patterns in an HDF5 file, with ``--no-compile`` and with
``--compile`` (compile included), results store and figures written.
Threads: PyTorch's default (all cores).

    python bench/bench_predict.py
    python bench/bench_predict.py --repeats 5 --tiles 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "predict"

FIRST_CALL = """
import sys, time, numpy as np
from stemae.strain import ccstae
x = np.load(sys.argv[1], mmap_mode="r")[:256]
step = ccstae.PredictStep(ccstae.load(sys.argv[2]), compile=True)
t = time.perf_counter()
step(np.asarray(x))
print(time.perf_counter() - t)
"""


def first_call(patterns: Path, bundle: Path, cache: Path) -> float:
    """Seconds of the compiled step's first call in a new process with
    PyTorch's compile cache at ``cache``."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, str(patterns), str(bundle)], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def cli_seconds(path: Path, bundle: Path, out: Path, flag: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "stemae"), "predict", str(path), "--model", str(bundle),
                    "--out", str(out), "--reference-phase", "0", flag, "--no-progress"], check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=8, help="the scan tiled this many times for the CLI runs")
    args = ap.parse_args()

    from stemae.data import write_datacube
    from stemae.simulate import heterostructure
    from stemae.strain import ccstae

    WORK.mkdir(parents=True, exist_ok=True)
    sim = heterostructure((64, 64), (128, 128), dose=1e5, seed=0)
    model, record = ccstae.fit(sim.data, n_classes=2, seed=0)
    bundle = ccstae.save(model, WORK / "model", record)
    x = np.ascontiguousarray(sim.data.reshape(-1, 128, 128))
    np.save(WORK / "patterns.npy", x[:256])

    cold = tempfile.mkdtemp(prefix="inductor-")
    try:
        t_cold = first_call(WORK / "patterns.npy", bundle, Path(cold))
        t_warm = first_call(WORK / "patterns.npy", bundle, Path(cold))
    finally:
        shutil.rmtree(cold, ignore_errors=True)

    plain, fused = ccstae.PredictStep(model), ccstae.PredictStep(model, compile=True)
    plain(x[:256])
    fused(x[:256])
    rates = {"plain": [], "compiled": []}
    for _ in range(args.repeats):
        for name, step in (("plain", plain), ("compiled", fused)):
            t = time.perf_counter()
            step(x)
            rates[name].append(len(x) / (time.perf_counter() - t))
    a, b = plain(x), fused(x)
    phases_equal, dG = float((a["phase"] == b["phase"]).mean()), float(np.nanmax(np.abs(a["G"] - b["G"])))

    med = {k: float(np.median(v)) for k, v in rates.items()}
    print(f"threads {torch.get_num_threads()}; {len(x)} patterns 128x128, K = 2")
    print(f"in memory, patterns/s: plain {med['plain']:.0f} ({', '.join(f'{r:.0f}' for r in rates['plain'])}), "
          f"compiled {med['compiled']:.0f} ({', '.join(f'{r:.0f}' for r in rates['compiled'])}); "
          f"ratio {med['compiled'] / med['plain']:.2f}")
    print(f"compiled first call (256 patterns, sub-batches of 128): {t_cold:.0f} s with an empty compile cache, {t_warm:.0f} s with it "
          f"filled; compiled against plain: largest |G| difference {dG:.1e} px, "
          f"{100 * phases_equal:.1f} % of phases equal", flush=True)
    path = WORK / f"tiled-{args.tiles}.h5"  # one file per tiling: a file of another size would misstate the rate
    if not path.exists():
        write_datacube(path, np.concatenate([sim.data] * args.tiles), sim.calibration)
    n_cli = 4096 * args.tiles
    t_no = cli_seconds(path, bundle, WORK / "cli-plain", "--no-compile")
    t_yes = cli_seconds(path, bundle, WORK / "cli-compiled", "--compile")

    print(f"stemae predict, {n_cli} patterns: --no-compile {n_cli / t_no:.0f}/s ({t_no:.0f} s), "
          f"--compile {n_cli / t_yes:.0f}/s ({t_yes:.0f} s, compile included, this user's compile cache)")


if __name__ == "__main__":
    main()
