"""`stemae live` against a detector stream: the highest frame rate it
sustains with no growing backlog, for 128x128 and 256x256 patterns with
the CC-ST-AE, next to the same step mapping patterns already in memory.

Data: the built-in simulator's WS2/WSe2 patterns (1e5 electrons) written as
a Merlin .mib file and replayed by LiberTEM-live's Merlin simulator
(`libertem-live-mib-sim`) on loopback; a CC-ST-AE trained on them for one
epoch (speed does not depend on training). First the simulator sends as
fast as it can: frames then arrive faster than they are mapped, and the
mapping rate from the first mapped block to the last is what the live run
reaches. Then the simulator replays at 90 %, 75 %, 60 % or 45 % of that
rate (its dwell time), highest first, until the run keeps up: frames are
mapped at 97 % of their arrival rate or more and the backlog grows by at
most one block from the first half of the scan to the second.
The live run's state is read from its live page (`/state`) every 0.5 s. stemae uses PyTorch's default threads (2 here); the
simulator, the receiver and the page share the same cores.

    python bench/bench_live.py
    python bench/bench_live.py --sizes 128 --scan 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

#: Fractions of the unpaced mapping rate tried, highest first.
FRACTIONS = (0.9, 0.75, 0.6, 0.45)


def make_scan(tmp: Path, size: int, scan: tuple[int, int]):
    from mib_writer import write_mib

    from stemae.simulate import heterostructure
    from stemae.strain import ccstae

    sim = heterostructure(scan, (size, size), dose=1e5, seed=6)
    mib, hdr = write_mib(tmp / f"scan{size}.mib", sim.data.reshape(-1, size, size), scan)
    model, _ = ccstae.fit(sim.data, n_classes=2, epochs=1, n_train=256, seed=0)
    ccstae.save(model, tmp / f"model{size}")
    return hdr, tmp / f"model{size}", sim.data


def in_memory(bundle: Path, data: np.ndarray) -> float:
    """Patterns per second of the step on patterns in memory (the runner, whole scan)."""
    from stemae.runner import run
    from stemae.strain.run import load_step

    step = load_step(bundle)
    run(step, data[:1])
    t = time.perf_counter()
    run(step, data)
    return data.shape[0] * data.shape[1] / (time.perf_counter() - t)


def live_run(hdr: Path, bundle: Path, scan: tuple[int, int], out: Path, dwell_us: int | None) -> list[dict]:
    """One live run against the simulator; the page's states over time."""
    from peers import MerlinSim, free_port

    sim = MerlinSim(hdr, dwell_us)
    port = free_port()
    run = sim.live("--model", str(bundle), "--scan", f"{scan[0]}x{scan[1]}", "--out", str(out), "--view", str(port),
                   "--reference-phase", "0")
    states = []
    try:
        while run.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=2) as r:
                    s = json.load(r)
                states.append({"t": time.monotonic(), **{k: s[k] for k in ("arrived", "mapped", "backlog")}})
            except OSError:
                pass
            time.sleep(0.5)
        _, err = run.communicate()
        if run.returncode != 0:
            raise RuntimeError(err[-2000:])
    finally:
        sim.stop()
    return states


def rates(states: list[dict], total: int) -> dict:
    """Arrival and mapping rates and the backlog in each half of the scan."""
    t = np.array([s["t"] for s in states])
    arrived = np.array([s["arrived"] for s in states])
    mapped = np.array([s["mapped"] for s in states])
    first_in, all_in = t[np.argmax(arrived > 0)], t[np.argmax(arrived >= total)]
    first_map, all_mapped = t[np.argmax(mapped > 0)], t[np.argmax(mapped >= total)]
    m0 = mapped[np.argmax(mapped > 0)]
    half = arrived < total / 2
    late = (arrived >= total / 2) & (arrived < total)
    return {"arrival": total / max(all_in - first_in, 1e-9),
            "mapping": (total - m0) / max(all_mapped - first_map, 1e-9),
            "backlog_first_half": int(np.max(arrived[half] - mapped[half], initial=0)),
            "backlog_second_half": int(np.max(arrived[late] - mapped[late], initial=0))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="pattern sides, px")
    p.add_argument("--scan", type=int, default=48, help="scan rows (and columns) for 128x128; half the rows at 256")
    args = p.parse_args()

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            scan = (args.scan, args.scan) if size <= 128 else (args.scan // 2, args.scan)
            total = scan[0] * scan[1]
            hdr, bundle, data = make_scan(tmp, size, scan)
            memory = in_memory(bundle, data)
            fast = rates(live_run(hdr, bundle, scan, tmp / f"fast{size}", None), total)
            for fraction in FRACTIONS:  # the highest paced rate whose backlog stays bounded
                target = fraction * fast["mapping"]
                paced = rates(live_run(hdr, bundle, scan, tmp / f"paced{size}-{fraction}", int(1e6 / target)), total)
                block = -(-256 // scan[1]) * scan[1]
                if (paced["mapping"] >= 0.97 * paced["arrival"]
                        and paced["backlog_second_half"] <= paced["backlog_first_half"] + block):
                    break
            rows.append((size, scan, memory, fast, fraction, paced))
    print(f"\nPyTorch threads {torch.get_num_threads()}; the detector simulator and the receiver on the same cores\n")
    print("| patterns | scan | step in memory | live, detector as fast as it can: arriving / mapped | "
          "live, paced at the highest fraction of that with a bounded backlog: arriving / mapped | "
          "largest backlog, first / second half of the scan |")
    print("|---|---|---|---|---|---|")
    for size, scan, memory, fast, fraction, paced in rows:
        print(f"| {size}x{size} | {scan[0]}x{scan[1]} | {memory:,.0f} patterns/s | {fast['arrival']:,.0f} / "
              f"{fast['mapping']:,.0f} frames/s | {fraction:.0%}: {paced['arrival']:,.0f} / "
              f"{paced['mapping']:,.0f} frames/s | {paced['backlog_first_half']} / "
              f"{paced['backlog_second_half']} frames |")


if __name__ == "__main__":
    main()
