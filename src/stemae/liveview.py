"""The live view: a web page served by ``stemae live --view PORT`` that shows
the strain, rotation and phase maps filling in, the latest pattern with its
fitted lattice, the frame rates and the backlog, updated by server-sent
events (no reloads, no build step: one HTML file with a small script).

It reads what the live run writes: the frames recorded so far
(:class:`stemae.live.LiveCube`) and the mapped blocks of the runner's
partial store, whose lattices it turns into strain against the bundle's
own reference (:func:`stemae.strain.lattice.strain_against`); the maps of
the final results store use the reference region given to the run.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import numpy as np

#: How often the page is sent a new state, seconds.
PERIOD = 0.5
#: Largest side of the latest pattern as sent to the page, px.
PATTERN_SIDE = 128


def _json_array(a: np.ndarray, digits: int = 6) -> list:
    """A flat list with NaN as None (JSON has no NaN)."""
    flat = np.asarray(a, np.float64).ravel()
    return [None if not np.isfinite(v) else round(float(v), digits) for v in flat]


class LiveView:
    """The state of a live run as the page sees it, and the HTTP server
    that shows it.

    Parameters
    ----------
    cube : the run's :class:`~stemae.live.LiveCube`
    partial : path of the runner's partial store
    bases : (K, 2, 2) the bundle's reference bases, px
    """

    def __init__(self, cube, partial, bases: np.ndarray):
        self.cube, self.partial, self.bases = cube, Path(partial), np.asarray(bases, np.float64)
        self.status, self.message = "receiving", ""
        self.started = time.monotonic()
        self._history: list[tuple[float, int, int]] = []  # (time, arrived, mapped)
        Ry, Rx = cube.scan
        self._maps = {k: np.full((Ry, Rx), np.nan) for k in ("e_xx", "e_yy", "e_xy", "theta", "phase")}
        self._rows = np.zeros(Ry, bool)  # scan rows whose maps are drawn
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def finish(self, message: str = "", failed: bool = False):
        self.status, self.message = ("failed" if failed else "finished"), message

    def snapshot(self) -> dict:
        """Counts, rates, maps and the latest pattern with its lattice."""
        with self._lock:  # the page's requests come on several threads
            return self._snapshot()

    def _snapshot(self) -> dict:
        from stemae.runner import read_partial
        from stemae.strain.lattice import strain_against

        Ry, Rx = self.cube.scan
        arrived = int(self.cube.arrived)
        names = ["G", "cov", "origin"] + (["phase"] if len(self.bases) > 1 else [])
        part = read_partial(self.partial, names)
        maps, lattice = self._maps, None
        if part is not None:
            arrays, rows = part
            fresh = np.zeros((Ry, Rx), bool)
            fresh[rows[:Ry] & ~self._rows] = True  # rows mapped since the last look
            if fresh.any():
                phase = arrays["phase"][fresh] if "phase" in arrays else np.zeros(int(fresh.sum()), np.int64)
                s = strain_against(arrays["G"][fresh], arrays["cov"][fresh], self.bases, phase,
                                   uncertainty=False)["strain"]
                for j, k in enumerate(("e_xx", "e_yy", "e_xy", "theta")):
                    maps[k][fresh] = s[:, j]
                maps["phase"][fresh] = phase
                self._rows |= rows[:Ry]
            if self._rows.any():
                last = (int(np.flatnonzero(self._rows)[-1]), Rx - 1)
                lattice = {"position": list(last), "origin": _json_array(arrays["origin"][last]),
                           "G": _json_array(arrays["G"][last])}
        mapped = int(self._rows.sum()) * Rx
        now = time.monotonic()
        self._history = [h for h in self._history if now - h[0] < 5.0] + [(now, arrived, mapped)]
        t0, a0, m0 = self._history[0]
        span = max(now - t0, 1e-9)
        pattern = None
        if lattice is not None:  # the pattern whose lattice is drawn
            pattern = self._pattern(*lattice["position"])
        elif arrived:
            pattern = self._pattern(*divmod(arrived - 1, Rx))
        return {"status": self.status, "message": self.message, "scan": [Ry, Rx], "total": Ry * Rx,
                "arrived": arrived, "mapped": mapped, "backlog": arrived - mapped,
                "arrival_rate": (arrived - a0) / span if len(self._history) > 1 else 0.0,
                "mapping_rate": (mapped - m0) / span if len(self._history) > 1 else 0.0,
                "elapsed": now - self.started,
                "maps": {k: _json_array(v) for k, v in maps.items()}, "pattern": pattern, "lattice": lattice}

    def _pattern(self, r: int, c: int) -> dict:
        """Pattern ``(r, c)`` on a log scale, 0-255, at most :data:`PATTERN_SIDE` px a side."""
        frame = np.asarray(self.cube.frames[r, c], np.float64)
        step = max(1, int(np.ceil(max(frame.shape) / PATTERN_SIDE)))
        small = frame[: frame.shape[0] // step * step, : frame.shape[1] // step * step]
        small = small.reshape(small.shape[0] // step, step, small.shape[1] // step, step).mean((1, 3))
        logged = np.log1p(np.maximum(small, 0))
        scaled = np.round(255 * logged / max(logged.max(), 1e-12)).astype(int)
        return {"position": [r, c], "binning": step, "shape": list(scaled.shape), "data": scaled.ravel().tolist()}

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve the page at ``http://HOST:PORT/`` in a background thread."""
        view = self
        page = files("stemae").joinpath("liveview.html").read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the CLI prints what matters
                pass

            def _send(self, body: bytes, kind: str):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path in ("/", "/index.html"):
                    self._send(page, "text/html; charset=utf-8")
                elif self.path == "/state":
                    self._send(json.dumps(view.snapshot()).encode(), "application/json")
                elif self.path == "/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    try:
                        while True:
                            state = view.snapshot()
                            self.wfile.write(b"data: " + json.dumps(state).encode() + b"\n\n")
                            self.wfile.flush()
                            if state["status"] != "receiving":
                                return
                            time.sleep(PERIOD)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="stemae-view", daemon=True).start()

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
