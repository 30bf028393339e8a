"""Domain maps: stemae's windowing autoencoder vs AtomAI's SlidingFFTNMF.

Both run in the same invocation on the same simulated bright-field images,
with seeds that the tests do not use:

- ``images``: independent images, each with all five domain types (domain-free,
  walls at 0, 90, +45, -45 degrees). Segmentation is scored against the truth
  at the window grid (the truth label at each window centre) by the adjusted
  Rand index; stemae chooses the number of types itself, SlidingFFTNMF is
  given it (k-means on its NMF abundances, per image).
- ``series``: a temperature series of one sample area. Per-frame domain
  fractions are compared with the true fractions at the window grid after
  matching clusters to true types (one matching for the whole series for
  stemae, whose types are shared by all frames; per frame for
  SlidingFFTNMF, which unmixes each image on its own).
- throughput: windowed FFT plus encoding of 64x64 windows (stride 16), windows
  per second, against SlidingFFTNMF's windowing plus FFT alone.

SlidingFFTNMF lives in its own virtual environment, created on first use at
bench/.venv-fftnmf (needs PyPI access once).

    python bench/bench_domains.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, confusion_matrix

from stemae.domains import model as ae
from stemae.domains.run import map_domains
from stemae.domains.windows import window_ffts
from stemae.simulate.domains import DOMAIN_TYPES, simulate_domain_images, simulate_domain_series

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
NMF_VENV = HERE / ".venv-fftnmf"
ATOMAI_VERSION = "0.8.1"
K = len(DOMAIN_TYPES)


def fftnmf_python() -> Path:
    py = NMF_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {NMF_VENV} with atomai=={ATOMAI_VERSION} (SlidingFFTNMF) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(NMF_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["numpy", "scipy", "scikit-learn", "scikit-image"], check=True)
        subprocess.run(pip + ["--no-deps", f"atomai=={ATOMAI_VERSION}"], check=True)
    return py


def run_fftnmf(images: np.ndarray, window: int, step: int, time_only: bool = False) -> dict:
    WORK.mkdir(exist_ok=True)
    np.save(WORK / "fftnmf_images.npy", images)
    cfg = dict(images=str(WORK / "fftnmf_images.npy"), out=str(WORK / "fftnmf_out.npz"), window=window, step=step,
               components=K, time_only=time_only)
    (WORK / "fftnmf_settings.json").write_text(json.dumps(cfg))
    proc = subprocess.run([str(fftnmf_python()), str(HERE / "fftnmf_runner.py"), str(WORK / "fftnmf_settings.json")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"SlidingFFTNMF run failed:\n{proc.stderr[-3000:]}")
    r = np.load(WORK / "fftnmf_out.npz")
    return {k: r[k] for k in r.files}


def nmf_labels(abundances: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per-frame k-means (k = number of true types) on L1-normalised NMF abundances."""
    out = []
    for ab in abundances:
        a = ab.reshape(-1, ab.shape[-1])
        a = a / np.maximum(a.sum(1, keepdims=True), 1e-12)
        out.append(KMeans(K, n_init=10, random_state=seed).fit_predict(a).reshape(ab.shape[:2]))
    return np.array(out)


def matched_fractions(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fractions (T, K) of the predicted clusters matched to true types (Hungarian,
    on the pooled confusion matrix of all frames given)."""
    n_pred = int(pred.max()) + 1
    cm = confusion_matrix(truth.ravel(), pred.ravel(), labels=range(max(K, n_pred)))[:K, :n_pred]
    rows, cols = linear_sum_assignment(-cm)
    frac = np.zeros((len(pred), K))
    for r, c in zip(rows, cols):
        frac[:, r] = (pred == c).reshape(len(pred), -1).mean(1)
    return frac


def case_images(args) -> dict:
    sim = simulate_domain_images(args.images, shape=(args.size, args.size), n_regions=6, seed=args.seed)
    t0 = time.perf_counter()
    maps, info, _ = map_domains(sim.images, window=args.window, epochs=args.epochs, seed=0)
    t_ours = time.perf_counter() - t0
    truth = sim.labels_at(maps["centres"])
    ari = adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel())
    ari_frames = [adjusted_rand_score(t.ravel(), p.ravel()) for t, p in zip(truth, maps["segmentation"])]
    nmf = run_fftnmf(sim.images, args.window, args.window // 4)
    nmf_lab = nmf_labels(nmf["abundances"])
    nmf_truth = sim.labels_at(nmf["centres"])
    nmf_ari = [adjusted_rand_score(t.ravel(), p.ravel()) for t, p in zip(nmf_truth, nmf_lab)]
    iy, ix = np.round(maps["centres"]).astype(int).transpose(2, 0, 1)
    ang, per = sim.angle[:, iy, ix], sim.period[:, iy, ix]
    ok = np.isfinite(ang) & (maps["anisotropy"] > 0.3)
    return dict(ari=ari, ari_frames=ari_frames, n_clusters=info["n_clusters"], nmf_ari=nmf_ari,
                orientation_mae=float(np.median(np.abs((maps["orientation"] - ang + 90) % 180 - 90)[ok])),
                period_mre=float(np.median(np.abs(maps["period"][ok] / per[ok] - 1))), seconds=t_ours,
                nmf_seconds=float(nmf["seconds_fft"] + nmf["seconds_nmf"]), windows=truth.size)


def case_series(args) -> dict:
    temps = (25, 50, 75, 100, 125, 150, 175, 200)
    sim = simulate_domain_series(temps, shape=(args.size, args.size), n_regions=16, seed=args.seed + 1)
    maps, info, _ = map_domains(sim.images, window=args.window, epochs=args.epochs, seed=0)
    truth = sim.labels_at(maps["centres"])
    true_frac = sim.fractions(maps["centres"])
    ours = matched_fractions(maps["segmentation"], truth)
    nmf = run_fftnmf(sim.images, args.window, args.window // 4)
    nmf_lab = nmf_labels(nmf["abundances"])
    nmf_truth = sim.labels_at(nmf["centres"])
    nmf_frac = np.array([matched_fractions(p[None], t[None])[0] for p, t in zip(nmf_lab, nmf_truth)])
    return dict(temps=temps, true=true_frac, ours=ours, nmf=nmf_frac, nmf_true=sim.fractions(nmf["centres"]),
                ari=adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel()), n_clusters=info["n_clusters"])


def throughput(args) -> dict:
    sim = simulate_domain_images(4, shape=(1024, 1024), n_regions=6, seed=args.seed + 2)
    model = ae.DomainAE(33, 8)
    ae.predict(model, window_ffts(sim.images[:1], 64, 16)[0], 64)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        spectra, _ = window_ffts(sim.images, 64, 16)
        ae.predict(model, spectra, 64)
        best = min(best, time.perf_counter() - t0)
    n = spectra.shape[0] * spectra.shape[1] * spectra.shape[2]
    nmf = run_fftnmf(sim.images, 64, 16, time_only=True)
    return dict(windows=n, ours=n / best, nmf=float(nmf["windows"] / nmf["seconds_fft"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4, help="independent images in the segmentation case")
    p.add_argument("--size", type=int, default=1024, help="image side, px")
    p.add_argument("--window", type=int, default=48, help="window side, px")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=101)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    r = case_images(args)
    print(f"\n[images] {args.images} images {args.size}x{args.size}, window {args.window}, "
          f"{r['windows']} windows; stemae found {r['n_clusters']} types")
    print(f"  adjusted Rand index vs truth: stemae {r['ari']:.3f} (per image "
          f"{' '.join(f'{a:.3f}' for a in r['ari_frames'])}); SlidingFFTNMF (given k={K}) per image "
          f"{' '.join(f'{a:.3f}' for a in r['nmf_ari'])}, mean {np.mean(r['nmf_ari']):.3f}")
    print(f"  stemae wall angle error (median) {r['orientation_mae']:.2f} deg, period error (median) "
          f"{100 * r['period_mre']:.1f} %; time stemae {r['seconds']:.1f} s (training included), "
          f"SlidingFFTNMF {r['nmf_seconds']:.1f} s")

    s = case_series(args)
    err = np.abs(s["ours"] - s["true"])
    nerr = np.abs(s["nmf"] - s["nmf_true"])
    print(f"\n[series] {len(s['temps'])} frames; stemae found {s['n_clusters']} types, ARI {s['ari']:.3f}")
    print("  T(C)   true fractions (free, 0, 90, +45, -45)   stemae               |err| max   SlidingFFTNMF |err| max")
    for t, tr, o, e, ne in zip(s["temps"], s["true"], s["ours"], err, nerr):
        print(f"  {t:4d}   {' '.join(f'{v:.2f}' for v in tr)}             {' '.join(f'{v:.2f}' for v in o)}"
              f"   {e.max():.3f}       {ne.max():.3f}")
    print(f"  largest fraction error: stemae {err.max():.3f}, SlidingFFTNMF {nerr.max():.3f}")

    t = throughput(args)
    print(f"\n[throughput] 64x64 windows, stride 16, {t['windows']} windows: stemae windowed FFT + encoding "
          f"{t['ours']:.0f} windows/s; SlidingFFTNMF windowing + FFT alone {t['nmf']:.0f} windows/s; "
          f"ratio {t['ours'] / t['nmf']:.1f}x")


if __name__ == "__main__":
    main()
