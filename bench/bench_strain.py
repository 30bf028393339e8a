"""Strain mapping: stemae's CC-ST-AE and xcorr vs py4DSTEM on the same data.

All run in the same invocation on the same simulated datacube; the script
prints patterns per second of each and the ratios, and each method's strain
error against the simulator's ground truth (py4DSTEM's fitted lattice vectors
are turned into strain with the same exact maths as stemae's, so the
comparison is of disk detection and lattice fitting, not of strain
definitions). For the CC-ST-AE it times fit plus predict end to end, and
prediction alone with the trained model; on the heterostructure it also
scores the phase map.

py4DSTEM pins numpy < 2, so it lives in its own virtual environment,
created on first use at bench/.venv-py4dstem (needs PyPI access once).

    python bench/bench_strain.py                     # 64x64 scan, 1e5 e
    python bench/bench_strain.py --case noisy --case descan --case poly
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
from stemae.simulate import heterostructure, polycrystal
from stemae.strain import ccstae, map_strain
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
    "poly": dict(dose=1e5, background=0.0, descan=0.0),
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


def score(sim, reference, res: dict) -> dict:
    """MAE against the truth, each true basis labelled like the measured one
    (a labelling convention matters in polycrystals, not for single phases)."""
    G = np.stack([res["g1"], res["g2"]], -1).astype(np.float64)
    truth = truth_strain_maps(sim.truth, reference, res["g_ref"], like=G)
    return strain_errors(res, truth, res["valid"])


def run_case(name: str, scan: int, pattern: int, seed: int) -> dict:
    poly = name == "poly"
    make = polycrystal if poly else heterostructure
    sim = make((scan, scan), (pattern, pattern), seed=seed, **CASES[name])
    n = scan * scan
    if poly:  # the reference is the grain at the scan centre
        mask = sim.truth["grain"] == sim.truth["grain"][scan // 2, scan // 2]
        reference = mask
    else:
        reference = ((0, scan), (0, max(2, scan // 6)))
        mask = np.zeros((scan, scan), bool)
        mask[reference[0][0] : reference[0][1], reference[1][0] : reference[1][1]] = True

    t = time.perf_counter()
    xc = map_strain(sim.data, method="xcorr", reference=reference)
    t_xc = time.perf_counter() - t
    err_xc = score(sim, reference, xc)

    classes = 1 if poly else 2
    t = time.perf_counter()
    model, _ = ccstae.fit(sim.data, n_classes=classes, seed=seed)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    pred = ccstae.predict(model, sim.data)
    t_pred = time.perf_counter() - t
    cc = ccstae.map_strain(pred, reference)
    err_cc = score(sim, reference, cc)
    phase_acc = None if poly else float((cc["phase"] == sim.truth["phase"]).mean())

    WORK.mkdir(exist_ok=True)
    data_path, ref_path = WORK / "data.npy", WORK / "reference.npy"
    np.save(data_path, sim.data)
    np.save(ref_path, mask)
    g = np.linalg.norm(xc["g_ref"], axis=0).min()
    p4 = run_py4dstem(
        data_path,
        ref_path,
        xc["radius"],
        np.nanmedian(xc["origin"].reshape(-1, 2), axis=0),
        xc["g_ref"],
        dict(min_relative_intensity=0.005, min_spacing=float(0.5 * g), max_peaks=70,
             max_peak_spacing=float(0.15 * g)),
    )
    G = align_to_reference(np.stack([p4["g1"], p4["g2"]], -1).astype(np.float64), xc["g_ref"])
    valid = p4["valid"] & np.isfinite(G).all(axis=(-1, -2))
    maps, g_ref = strain_maps(G, reference, valid)
    err_p4 = score(sim, reference, dict(maps, g1=G[..., 0], g2=G[..., 1], g_ref=g_ref, valid=valid))
    t_p4 = float(p4["t_detect"] + p4["t_strain"])
    return dict(
        case=name,
        **CASES[name],
        patterns=n,
        pattern_px=pattern,
        rate=dict(ccstae_end_to_end=n / (t_fit + t_pred), ccstae_predict=n / t_pred, xcorr=n / t_xc,
                  py4dstem=n / t_p4, py4dstem_detect=n / float(p4["t_detect"])),
        speedup=dict(ccstae_end_to_end=t_p4 / (t_fit + t_pred), ccstae_predict_vs_detect=float(p4["t_detect"]) / t_pred,
                     xcorr=t_p4 / t_xc),
        mae=dict(ccstae=err_cc, xcorr=err_xc, py4dstem=err_p4),
        phase_accuracy=phase_acc,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: clean")
    ap.add_argument("--scan", type=int, default=64)
    ap.add_argument("--pattern", type=int, default=128)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rows = [run_case(c, args.scan, args.pattern, args.seed) for c in (args.case or ["clean"])]
    fmt = lambda e: "/".join(f"{e[k]:.1e}" for k in COMPONENTS[:3]) + f"/{e['theta']:.3f}"
    print(f"\nstrain mapping, {args.scan}x{args.scan} scan of {args.pattern}x{args.pattern} patterns; "
          "MAE e_xx/e_yy/e_xy/theta(deg)")
    print("| case | ccstae MAE | xcorr MAE | py4DSTEM MAE | ccstae/xcorr | ccstae/py4DSTEM | phase acc |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["mae"]
        ratio = lambda a, b: max(m[a][k] / m[b][k] for k in COMPONENTS)
        acc = "" if r["phase_accuracy"] is None else f"{r['phase_accuracy']:.1%}"
        print(f"| {r['case']} | {fmt(m['ccstae'])} | {fmt(m['xcorr'])} | {fmt(m['py4dstem'])} | "
              f"{ratio('ccstae', 'xcorr'):.2f} | {ratio('ccstae', 'py4dstem'):.2f} | {acc} |")
    print("\n(ratio columns: the worst component's MAE ratio; below 1 means ccstae is better)")
    print("| case | ccstae fit+predict pat/s | ccstae predict pat/s | xcorr pat/s | py4DSTEM pat/s "
          "| end-to-end speed-up | predict vs py4DSTEM detection | xcorr speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, s = r["rate"], r["speedup"]
        print(f"| {r['case']} | {q['ccstae_end_to_end']:.0f} | {q['ccstae_predict']:.0f} | {q['xcorr']:.0f} | "
              f"{q['py4dstem']:.1f} | {s['ccstae_end_to_end']:.1f}x | {s['ccstae_predict_vs_detect']:.1f}x | "
              f"{s['xcorr']:.1f}x |")
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
