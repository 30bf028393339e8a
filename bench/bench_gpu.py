"""CC-ST-AE throughput on a GPU against the CPU of the same machine.

Trains on a simulated WS2/WSe2 heterostructure (128x128 monolayer-like
patterns: 97 % of the electrons in the central beam, 30 % diffuse background,
1e5 electrons) and times ``predict`` with ``--device cuda`` at two batch
sizes, and on the CPU with all its cores, on the same trained model; checks that the GPU's strain maps agree
with the CPU's.

    python bench/bench_gpu.py --scan 128
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from stemae.simulate import heterostructure
from stemae.strain import ccstae


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", type=int, default=128)
    ap.add_argument("--batch", type=int, action="append", help="repeatable; default 256 and 2048")
    args = ap.parse_args()
    sim = heterostructure((args.scan, args.scan), (128, 128), dose=1e5, central_fraction=0.97, background=0.3, seed=11)
    n = args.scan**2
    ref = ((0, args.scan), (0, args.scan // 6))
    (model, _), t_fit = timed(lambda: ccstae.fit(sim.data, n_classes=2, seed=11, device="cuda"))
    rows = {"gpu": torch.cuda.get_device_name(0), "patterns": n, "fit_s_cuda": t_fit, "cpu_threads": torch.get_num_threads()}
    for bs in args.batch or [256, 2048]:
        ccstae.predict(model, sim.data[:4], device="cuda", batch_size=bs)  # warm-up
        pred, t = timed(lambda: ccstae.predict(model, sim.data, device="cuda", batch_size=bs))
        rows[f"cuda_eager_batch{bs}"] = n / t
    pred_cpu, t = timed(lambda: ccstae.predict(model.cpu(), sim.data, device="cpu"))
    rows["cpu_eager"] = n / t
    a, b = ccstae.to_strain(pred, ref), ccstae.to_strain(pred_cpu, ref)
    rows["max_abs_diff_e_xx_gpu_vs_cpu"] = float(np.nanmax(np.abs(a["e_xx"] - b["e_xx"])))
    rows["median_sigma_e_xx"] = float(np.nanmedian(b["sigma_e_xx"]))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
