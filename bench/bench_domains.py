"""Domain maps over image families: stemae's windowing autoencoder and
spectral order test, with AtomAI's SlidingFFTNMF on the same images.

Every family is three 768x768 bright-field images (seeds the tests do not
use), mapped with stemae's default settings (window, number of types and
all). Families from the built-in simulator (``stemae.simulate.domains``):
sinusoidal walls, sharp walls with long periods (18-35 px), fine (6-10 px)
and coarse (25-40 px) periods, no bend contours, unequal type fractions,
low contrast; and from an independently written generator
(``stemae.simulate.patchwork``: blob regions, gamma-distributed domain
widths, erf walls, multiplicative contrast, ring-shaped bend contours,
read noise) with sharp and with soft walls.

Per family: the adjusted Rand index of the types against the truth at the
window centres (all windows, and those further than half a window from a
region wall), recall and precision of domain-free windows away from walls,
the median wall-angle and period errors of stripe windows (against what
each window shows: the truth's local wave vectors averaged with the taper's
weights), and the number of types found. SlidingFFTNMF is told the true
number of types and uses stemae's window (k-means on its NMF abundances,
per image).

Also: a temperature series whose stripes fade to nothing (per-frame
fractions against the truth), and throughput: windowed FFT plus encoding of
64x64 windows with stride 16, the autoencoder alone (what the map step was
before the order test) and the whole per-window step (autoencoder, order
test, half-size windows), against SlidingFFTNMF's windowing plus FFT.

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
from stemae.domains.run import FrameStep, map_domains
from stemae.domains.windows import window_ffts
from stemae.simulate.domains import DOMAIN_TYPES, simulate_domain_images, simulate_domain_series
from stemae.simulate.patchwork import patchwork_images

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


SHAPE = (768, 768)
FAMILIES = {
    "sine": lambda seed: simulate_domain_images(3, SHAPE, 8, (8, 18), seed=seed, sharpness=(0.2, 0.4)),
    "sharp-long": lambda seed: simulate_domain_images(3, SHAPE, 8, (18, 35), seed=seed, sharpness=(6, 10)),
    "fine": lambda seed: simulate_domain_images(3, SHAPE, 8, (6, 10), seed=seed),
    "coarse": lambda seed: simulate_domain_images(3, SHAPE, 8, (25, 40), seed=seed),
    "no-contours": lambda seed: simulate_domain_images(3, SHAPE, 8, (10, 20), seed=seed, bend_contours=0),
    "unequal": lambda seed: simulate_domain_images(3, SHAPE, 10, (10, 20), seed=seed,
                                                   type_weights=(0.45, 0.3, 0.12, 0.08, 0.05)),
    "low-contrast": lambda seed: simulate_domain_images(3, SHAPE, 8, (10, 20), seed=seed, contrast=(0.04, 0.08)),
    "patchwork-sharp": lambda seed: patchwork_images(3, SHAPE, period_range=(18, 35), wall=0.7, seed=seed),
    "patchwork-soft": lambda seed: patchwork_images(3, SHAPE, period_range=(8, 20), wall=3.0, seed=seed),
}


def score(sim, maps: dict, window: int) -> dict:
    """Segmentation, domain-free detection, angle and period against the truth."""
    centres = maps["centres"]
    truth = sim.labels_at(centres)
    seg = maps["segmentation"]
    iy, ix = np.round(centres).astype(int).transpose(2, 0, 1)
    far = sim.wall_distance()[:, iy, ix] > window / 2
    free_t, free_p = (truth == 0) & far, (seg == 0) & far
    ang, per = sim.window_truth(centres, window)
    ok = np.isfinite(ang) & (seg > 0)
    return dict(
        ari=adjusted_rand_score(truth.ravel(), seg.ravel()),
        ari_far=adjusted_rand_score(truth[far], seg[far]),
        free_recall=float((free_t & free_p).sum() / max(free_t.sum(), 1)) if free_t.any() else float("nan"),
        free_precision=float((free_t & free_p).sum() / max(free_p.sum(), 1)) if free_p.any() else float("nan"),
        angle=float(np.median(np.abs((maps["orientation"] - ang + 90) % 180 - 90)[ok])),
        period=float(np.median(np.abs(maps["period"][ok] / per[ok] - 1))),
        types_true=int(len(np.unique(truth))), windows=int(truth.size),
    )


def case_family(name: str, seed: int) -> dict:
    sim = FAMILIES[name](seed)
    t0 = time.perf_counter()
    maps, info, _ = map_domains(sim.images, seed=0)
    row = dict(family=name, seconds=time.perf_counter() - t0, window=info["window"], types=info["n_clusters"],
               **score(sim, maps, info["window"]))
    nmf = run_fftnmf(sim.images, info["window"], info["window"] // 4)
    nmf_truth = sim.labels_at(nmf["centres"])
    row["nmf_ari"] = float(np.mean([adjusted_rand_score(t.ravel(), p.ravel())
                                    for t, p in zip(nmf_truth, nmf_labels(nmf["abundances"]))]))
    return row


def case_series(seed: int) -> dict:
    temps = (25, 50, 75, 100, 125, 150, 175, 200)
    sim = simulate_domain_series(temps, shape=SHAPE, n_regions=16, seed=seed)
    maps, info, _ = map_domains(sim.images, seed=0)
    truth = sim.labels_at(maps["centres"])
    true_frac = sim.fractions(maps["centres"])
    ours = matched_fractions(maps["segmentation"], truth)
    nmf = run_fftnmf(sim.images, info["window"], info["window"] // 4)
    nmf_lab = nmf_labels(nmf["abundances"])
    nmf_truth = sim.labels_at(nmf["centres"])
    nmf_frac = np.array([matched_fractions(p[None], t[None])[0] for p, t in zip(nmf_lab, nmf_truth)])
    return dict(temps=temps, true=true_frac, ours=ours, nmf=nmf_frac, nmf_true=sim.fractions(nmf["centres"]),
                ari=adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel()), n_clusters=info["n_clusters"],
                window=info["window"])


def throughput(seed: int) -> dict:
    sim = simulate_domain_images(4, shape=(1024, 1024), n_regions=6, seed=seed)
    model = ae.DomainAE(33, 8)

    def encode_only():
        spectra, _ = window_ffts(sim.images, 64, 16)
        ae.predict(model, spectra, 64)
        return spectra.shape[0] * spectra.shape[1] * spectra.shape[2]

    def whole_step():
        step = FrameStep(model, sim.images.shape[1:], 64, 16, 33)
        return sum(step(f[None])["order"].size for f in sim.images)

    out = {}
    for name, fn in (("encode", encode_only), ("step", whole_step)):
        fn()  # warm-up (and the order test's null, computed once per window size)
        best = min(_timed(fn) for _ in range(3))
        out[name] = best[1] / best[0]
    nmf = run_fftnmf(sim.images, 64, 16, time_only=True)
    out["nmf"] = float(nmf["windows"] / nmf["seconds_fft"])
    return out


def _timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", action="append", choices=list(FAMILIES), help="families to run (default: all)")
    p.add_argument("--seed", type=int, default=1001)
    p.add_argument("--no-series", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    rows = []
    for i, name in enumerate(args.family or FAMILIES):
        rows.append(case_family(name, args.seed + i))
        print(f"done {name}", flush=True)
    WORK.mkdir(exist_ok=True)
    (WORK / "domains.json").write_text(json.dumps(rows, indent=1))
    print("\n| family | ARI (all / far from walls) | SlidingFFTNMF ARI | domain-free recall / precision | "
          "wall angle error (deg) | period error | types found (true) | window (px) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['ari']:.3f} / {r['ari_far']:.3f} | {r['nmf_ari']:.3f} | "
              f"{r['free_recall']:.3f} / {r['free_precision']:.3f} | {r['angle']:.2f} | {100 * r['period']:.1f} % | "
              f"{r['types']} ({r['types_true']}) | {r['window']} | {r['seconds']:.0f} |")
    if not args.no_series:
        s = case_series(args.seed + 100)
        err = np.abs(s["ours"] - s["true"])
        nerr = np.abs(s["nmf"] - s["nmf_true"])
        print(f"\n[series] {len(s['temps'])} frames, stripes fading to nothing; stemae found {s['n_clusters']} types "
              f"(window {s['window']} px), ARI {s['ari']:.3f}")
        print("  T(C)   true fractions (free, 0, 90, +45, -45)   stemae               |err| max   SlidingFFTNMF |err| max")
        for t, tr, o, e, ne in zip(s["temps"], s["true"], s["ours"], err, nerr):
            print(f"  {t:4d}   {' '.join(f'{v:.2f}' for v in tr)}             {' '.join(f'{v:.2f}' for v in o)}"
                  f"   {e.max():.3f}       {ne.max():.3f}")
        print(f"  largest fraction error: stemae {err.max():.3f}, SlidingFFTNMF {nerr.max():.3f}")
    if not args.no_throughput:
        t = throughput(args.seed + 200)
        print(f"\n[throughput] 64x64 windows, stride 16, 4 images 1024x1024: windowed FFT + encoding "
              f"{t['encode']:.0f} windows/s; whole per-window step (encoding and order test) "
              f"{t['step']:.0f} windows/s; SlidingFFTNMF windowing + FFT alone {t['nmf']:.0f} windows/s")


if __name__ == "__main__":
    main()
