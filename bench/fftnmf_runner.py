"""Run AtomAI's SlidingFFTNMF (windowed FFT + NMF unmixing) on a .npy image stack.

Runs inside its own virtual environment (bench/.venv-fftnmf) with atomai
installed without its dependencies: ``atomai/__init__`` imports modules that
need torchvision, OpenCV and GPyTorch, none of which SlidingFFTNMF uses, so
its unmodified ``atomai/stat/fft_nmf.py`` is imported on its own. Called by
bench_domains.py:

    python fftnmf_runner.py settings.json

settings: images (.npy, (T, H, W)), out (.npz), window, step, components,
and ``time_only`` (windows + FFT only, for throughput). Writes per frame the
NMF abundances (T, ny, nx, components), the window centres (ny, nx, 2)
(y, x) and timings.
"""

import contextlib
import importlib.util
import io
import json
import sys
import time
import types
from pathlib import Path

import numpy as np


def load_sliding_fft_nmf():
    root = Path(importlib.util.find_spec("atomai").submodule_search_locations[0])
    for name, path in (("atomai", root), ("atomai.stat", root / "stat")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    utils = types.ModuleType("atomai.utils")
    utils.load_image = None  # only used for file paths; the runner passes arrays
    sys.modules["atomai.utils"] = utils
    spec = importlib.util.spec_from_file_location("atomai.stat.fft_nmf", root / "stat" / "fft_nmf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SlidingFFTNMF


def main(settings_path):
    s = json.load(open(settings_path))
    SlidingFFTNMF = load_sliding_fft_nmf()
    images = np.load(s["images"])
    w, step = s["window"], s["step"]
    abundances, t_fft, t_nmf, n = [], 0.0, 0.0, 0
    for img in images:
        model = SlidingFFTNMF(w, w, step, step, interpolation_factor=1, zoom_factor=2, components=s["components"])
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            ffts = model.process_fft(model.make_windows(img))
            t_fft += time.perf_counter() - t0
            n += len(ffts)
            if s["time_only"]:
                continue
            t0 = time.perf_counter()
            _, ab = model.run_nmf(ffts)
            t_nmf += time.perf_counter() - t0
        abundances.append(ab)
    ny, nx = model.windows_shape
    centres = np.stack(np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij"), -1) + (w - 1) / 2
    np.savez(s["out"], abundances=np.array(abundances), centres=centres, seconds_fft=t_fft, seconds_nmf=t_nmf,
             windows=n)


if __name__ == "__main__":
    main(sys.argv[1])
