"""`stemae serve` against the in-process runner: throughput at 64 patterns
per request under concurrency as a ratio to the runner on the same data in
the same run, and latency percentiles at batch 1 (one client) and under
concurrency (dynamic batching).

Data: the built-in simulator's WS2/WSe2 patterns (1e5 electrons, 128x128),
a CC-ST-AE trained on them (one epoch: the speed does not depend on the
training) and the classical xcorr state. The server is one `stemae serve`
process on loopback (PyTorch's default threads); the clients are
tritonclient's HTTP client with binary tensors, in this process, sharing
the same cores. The in-process runner uses this process's threads.

    python bench/bench_serve.py
    python bench/bench_serve.py --scan 32 --concurrency 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_repository(repo: Path, scan: int, size: int):
    from stemae.simulate import heterostructure
    from stemae.strain import ccstae, classical

    sim = heterostructure((scan, scan), (size, size), dose=1e5, seed=4)
    model, _ = ccstae.fit(sim.data, n_classes=2, epochs=1, n_train=256, seed=0)
    ccstae.save(model, repo / "ccstae" / "1")
    classical.save_state(classical.fit_state(sim.data, method="xcorr"), repo / "xcorr" / "1", sim.data.shape[2:])
    return sim.data.reshape(-1, size, size).astype(np.float32)


def in_process(repo: Path, name: str, patterns: np.ndarray, repeats: int = 2) -> float:
    """Patterns per second of the runner over the datacube (best of ``repeats``, after a warm-up)."""
    from stemae.runner import run
    from stemae.strain.run import load_step

    step = load_step(repo / name / "1")
    cube = patterns.reshape(-1, 32, *patterns.shape[1:]) if len(patterns) % 32 == 0 else patterns[None]
    run(step, cube[:1])  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        run(step, cube)
        best = min(best, time.perf_counter() - t)
    return len(patterns) / best


def load(url: str, name: str, patterns: np.ndarray, batch: int, concurrency: int) -> dict:
    """Every pattern sent once in requests of ``batch`` by ``concurrency``
    clients at once: patterns per second and request latencies (ms)."""
    import tritonclient.http as th

    starts = list(range(0, len(patterns) - batch + 1, batch))
    latencies, lock = [], threading.Lock()

    def client(k):
        c = th.InferenceServerClient(url, network_timeout=600)
        for s in starts[k::concurrency]:
            inp = th.InferInput("patterns", [batch, *patterns.shape[1:]], "FP32")
            inp.set_data_from_numpy(patterns[s:s + batch])
            t = time.perf_counter()
            c.infer(name, [inp], outputs=[th.InferRequestedOutput("strain"), th.InferRequestedOutput("G")])
            with lock:
                latencies.append(1e3 * (time.perf_counter() - t))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    t = time.perf_counter()
    for th_ in threads:
        th_.start()
    for th_ in threads:
        th_.join()
    wall = time.perf_counter() - t
    lat = np.array(latencies)
    return {"rate": len(starts) * batch / wall, "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95),
            "p99": np.percentile(lat, 99), "requests": len(lat)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", type=int, default=32, help="scan side (patterns: its square)")
    p.add_argument("--size", type=int, default=128, help="pattern side, px")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3, help="alternated runs of the runner and the server")
    args = p.parse_args()

    import torch

    from peers import Server

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        patterns = make_repository(repo, args.scan, args.size)
        print(f"{len(patterns)} patterns of {args.size}x{args.size}; PyTorch threads {torch.get_num_threads()} "
              f"(runner and server alike)")
        server = Server(repo, "--max-batch", "1024", "--max-delay-ms", str(args.max_delay_ms))
        try:
            rows = []
            for name in ("ccstae", "xcorr"):
                load(server.url, name, patterns[:128], 64, 1)  # warm-up
                ratios, heres, bigs = [], [], []
                for _ in range(args.repeats):  # alternated: this machine's speed drifts
                    heres.append(in_process(repo, name, patterns, repeats=1))
                    bigs.append(load(server.url, name, patterns, 64, args.concurrency))
                    ratios.append(bigs[-1]["rate"] / heres[-1])
                one = load(server.url, name, patterns[:200 if name == "ccstae" else 400], 1, 1)
                many = load(server.url, name, patterns[:400 if name == "ccstae" else 800], 1, 8)
                rows.append((name, heres, bigs, ratios, one, many))
        finally:
            server.stop()
    print()
    print(f"| model | in-process runner | server, 64/request, {args.concurrency} clients | server / in-process "
          "(median; each repeat) | batch 1, 1 client: rate, p50 / p95 / p99 | batch 1, 8 clients: rate, "
          "p50 / p95 / p99 |")
    print("|---|---|---|---|---|---|")
    for name, heres, bigs, ratios, one, many in rows:
        print(f"| {name} | {np.median(heres):,.0f} patterns/s | {np.median([b['rate'] for b in bigs]):,.0f} "
              f"patterns/s | {np.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) | "
              f"{one['rate']:,.0f}/s, {one['p50']:.1f} / {one['p95']:.1f} / {one['p99']:.1f} ms | "
              f"{many['rate']:,.0f}/s, {many['p50']:.1f} / {many['p95']:.1f} / {many['p99']:.1f} ms |")


if __name__ == "__main__":
    main()
