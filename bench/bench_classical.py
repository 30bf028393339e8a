"""Classical strain mapping: stemae vs py4DSTEM on the same simulated data.

Both run in the same invocation on the same datacube; the script prints
patterns per second of each and their ratio, and each method's strain error
against the simulator's ground truth (py4DSTEM's fitted lattice vectors are
turned into strain with the same exact maths as stemae's, so the comparison
is of disk detection and lattice fitting, not of strain definitions).

py4DSTEM pins numpy < 2, so it lives in its own virtual environment,
created on first use at bench/.venv-py4dstem (needs PyPI access once).

    python bench/bench_classical.py                     # 64x64 scan, 1e5 e
    python bench/bench_classical.py --case noisy --case descan
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stemae.geometry import strain_maps
from stemae.simulate import heterostructure
from stemae.strain import map_strain
from stemae.strain.evaluate import COMPONENTS, strain_errors, truth_strain_maps
from stemae.strain.lattice import align_to_reference

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
P4_VENV = HERE / ".venv-py4dstem"
P4_VERSION = "0.14.18"

CASES = {
    "clean": dict(dose=1e5, background=0.0, descan=0.0),
    "noisy": dict(dose=1e4, background=0.3, descan=0.0),
    "very-noisy": dict(dose=2e3, background=0.5, descan=0.0),
    "descan": dict(dose=1e5, background=0.0, descan=4.0),
}


def py4dstem_python() -> Path:
    py = P4_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {P4_VENV} with py4DSTEM=={P4_VERSION} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(P4_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"py4DSTEM=={P4_VERSION}"], check=True)
    return py


def run_py4dstem(data_path, ref_path, radius, center, basis, settings) -> dict:
    out = WORK / "py4dstem_out.npz"
    cfg = dict(
        data=str(data_path),
        reference=str(ref_path),
        out=str(out),
        radius=float(radius),
        center_guess_rowcol=[float(center[1]), float(center[0])],
        g1=basis[:, 0].tolist(),
        g2=basis[:, 1].tolist(),
        **settings,
    )
    cfg_path = WORK / "py4dstem_settings.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(py4dstem_python()), str(HERE / "py4dstem_runner.py"), str(cfg_path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"py4DSTEM run failed:\n{proc.stderr[-3000:]}")
    r = np.load(out)
    return {k: r[k] for k in r.files}


def run_case(name: str, scan: int, pattern: int, seed: int) -> dict:
    sim = heterostructure((scan, scan), (pattern, pattern), seed=seed, **CASES[name])
    n = scan * scan
    reference = ((0, scan), (0, max(2, scan // 6)))
    mask = np.zeros((scan, scan), bool)
    mask[reference[0][0] : reference[0][1], reference[1][0] : reference[1][1]] = True

    t = time.perf_counter()
    ours = map_strain(sim.data, method="xcorr", reference=reference)
    t_ours = time.perf_counter() - t
    truth = truth_strain_maps(sim.truth, reference, ours["g_ref"])
    err_ours = strain_errors(ours, truth, ours["valid"])

    WORK.mkdir(exist_ok=True)
    data_path, ref_path = WORK / "data.npy", WORK / "reference.npy"
    np.save(data_path, sim.data)
    np.save(ref_path, mask)
    g = np.linalg.norm(ours["g_ref"], axis=0).min()
    p4 = run_py4dstem(
        data_path,
        ref_path,
        ours["radius"],
        np.nanmedian(ours["origin"].reshape(-1, 2), axis=0),
        ours["g_ref"],
        dict(min_relative_intensity=0.005, min_spacing=float(0.5 * g), max_peaks=70,
             max_peak_spacing=float(0.15 * g)),
    )
    G = align_to_reference(np.stack([p4["g1"], p4["g2"]], -1).astype(np.float64), ours["g_ref"])
    valid = p4["valid"] & np.isfinite(G).all(axis=(-1, -2))
    maps, _ = strain_maps(G, reference, valid)
    truth4 = truth_strain_maps(sim.truth, reference, ours["g_ref"])
    err_p4 = strain_errors(maps, truth4, valid)
    t_p4 = float(p4["t_detect"] + p4["t_strain"])
    return dict(
        case=name,
        **CASES[name],
        patterns=n,
        pattern_px=pattern,
        ours_rate=n / t_ours,
        p4_rate=n / t_p4,
        p4_detect_rate=n / float(p4["t_detect"]),
        speedup=t_p4 / t_ours,
        ours=err_ours,
        py4dstem=err_p4,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: clean")
    ap.add_argument("--scan", type=int, default=64)
    ap.add_argument("--pattern", type=int, default=128)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rows = [run_case(c, args.scan, args.pattern, args.seed) for c in (args.case or ["clean"])]
    print(f"\nclassical strain mapping, {args.scan}x{args.scan} scan of {args.pattern}x{args.pattern} patterns")
    print("| case | dose | background | descan px | stemae patterns/s | py4DSTEM patterns/s | speed ratio |"
          " MAE e_xx/e_yy/e_xy/theta(deg): stemae | py4DSTEM | valid stemae/py4DSTEM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda e: "/".join(f"{e[k]:.1e}" for k in COMPONENTS[:3]) + f"/{e['theta']:.3f}"
        print(f"| {r['case']} | {r['dose']:.0e} | {r['background']:.0%} | {r['descan']:g} | {r['ours_rate']:.0f} | "
              f"{r['p4_rate']:.1f} | {r['speedup']:.1f}x | {fmt(r['ours'])} | {fmt(r['py4dstem'])} | "
              f"{r['ours']['valid_fraction']:.0%}/{r['py4dstem']['valid_fraction']:.0%} |")
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
