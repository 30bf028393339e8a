"""Strain and phase while the scan is still running.

Frames come from a detector through LiberTEM-live (extra ``live``) and are
recorded, as they arrive, into ``OUT/frames.zarr`` (a datacube like any
other). The offline pipeline (:func:`stemae.strain.run.predict_strain` or
``predict_classical``) maps that datacube while it fills: a
:class:`LiveCube` hands the runner each block of scan rows once its frames
are in, and the runner keeps every finished block in its partial store. So
the live run ends with exactly what ``stemae predict OUT/frames.zarr``
gives, a crash loses no mapped block (running that command resumes), and no
frame is dropped: one not yet mapped waits on disk, counted as backlog.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from stemae.errors import InputError

#: Where the frames of a live run are recorded, in its output folder.
FRAMES = "frames.zarr"
#: Patterns per block of a live run by default (whole scan rows, at least this many).
LIVE_BATCH = 256


class DetectorGone(InputError):
    """The detector stopped sending before the scan was complete."""


class LiveCube:
    """A datacube ``(Ry, Rx, Qy, Qx)`` that fills while frames arrive.

    Reading scan rows waits until their frames are recorded; reading past
    the frames a finished or failed acquisition delivered, or waiting more
    than ``stall`` seconds without a new frame, raises
    :class:`DetectorGone`. ``arrived`` counts the frames recorded.
    """

    def __init__(self, frames, scan: tuple[int, int], stall: float = 60.0):
        self.frames, self.scan, self.stall = frames, tuple(scan), stall
        self.last = time.monotonic()  # when the latest frames arrived (or the wait began)
        self.shape = tuple(frames.shape)
        self.dtype = frames.dtype
        self.ndim = 4
        self.arrived = 0
        self.error: str | None = None
        self.finished = False
        self.changed = threading.Condition()

    def record(self, first: int, frames: np.ndarray):
        """Write ``frames`` (N, Qy, Qx), scan positions ``first`` ..
        ``first + N - 1`` in row-major order, and count them in."""
        Rx = self.scan[1]
        i = 0
        while i < len(frames):
            r, c = divmod(first + i, Rx)
            n = min(Rx - c, len(frames) - i)
            self.frames[r, c:c + n] = frames[i:i + n]
            i += n
        with self.changed:
            self.arrived = max(self.arrived, first + len(frames))
            self.last = time.monotonic()
            self.changed.notify_all()

    def end(self, error: str | None = None):
        """No more frames will come (``error`` says why, if the scan is incomplete)."""
        with self.changed:
            self.finished = True
            self.error = error
            self.changed.notify_all()

    def _wait(self, last_row: int):
        need = min((last_row + 1) * self.scan[1], self.scan[0] * self.scan[1])
        with self.changed:
            while self.arrived < need:
                if not self.finished and time.monotonic() - self.last > self.stall:
                    self.finished, self.error = True, (f"no frame came for {self.stall:g} s after {self.arrived} "
                                                       f"of {self.scan[0] * self.scan[1]}")
                if self.finished:
                    raise DetectorGone(self.error or f"the acquisition ended after {self.arrived} of "
                                                     f"{self.scan[0] * self.scan[1]} frames")
                self.changed.wait(1.0)

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        if isinstance(first, slice):
            last = (first.stop if first.stop is not None else self.shape[0]) - 1
        else:
            last = int(first)
        self._wait(min(last, self.shape[0] - 1))
        return self.frames[key]

    def __len__(self):
        return self.shape[0]


def open_frames(out_dir, scan: tuple[int, int], pattern_shape: tuple[int, int]):
    """A new zarr datacube ``OUT/frames.zarr`` ``(Ry, Rx, Qy, Qx)`` of
    float32 counts, one uncompressed chunk per scan row."""
    import zarr

    path = Path(out_dir) / FRAMES
    if path.exists():
        raise InputError(f"{path} exists: a live run records into a new folder (or remove it)")
    # Uncompressed: the receiving thread must not spend the mapping's CPU on compression.
    return zarr.create_array(str(path), shape=(*scan, *pattern_shape), chunks=(1, scan[1], *pattern_shape),
                             dtype="f4", zarr_format=2, compressors=None, fill_value=0)


#: The detectors ``stemae live`` receives from (LiberTEM-live connection
#: names) and their default ports: data (Merlin's TCP stream, DECTRIS's
#: ZeroMQ stream) and control (Merlin's control port, DECTRIS's REST API).
DETECTORS = {"merlin": {"port": 6342, "api_port": 6341}, "dectris": {"port": 9999, "api_port": 80}}


def receive(cube: LiveCube, *, detector: str, host: str, port: int, api_port: int, timeout: float = 60.0):
    """Receive one acquisition through LiberTEM-live and record its frames
    into ``cube``; end the cube, with a message if the detector stopped
    early or sent frames of another size. Runs in its own thread.

    Merlin: the acquisition the detector software starts (passive); its
    frames flipped up-down as RosettaSciIO reads a .mib file, so live and
    offline maps of one scan agree. DECTRIS: armed through the detector's
    REST API at ``host:api_port`` (active), frames from its ZeroMQ stream at
    ``host:port`` as the detector sends them."""
    import torch
    from libertem.executor.inline import InlineJobExecutor
    from libertem.udf.base import UDF
    from libertem_live.api import LiveContext

    received: list = []
    flip = detector == "merlin"

    class Frames(UDF):
        """Hands each partition's frames to the receiving loop."""

        def get_result_buffers(self):
            return {"seen": self.buffer(kind="nav", dtype=bool)}

        def process_partition(self, partition):
            frames = partition[:, ::-1] if flip else partition
            received.append((int(self.meta.slice.origin[0]), np.array(frames, np.float32)))
            self.results.seen[:] = True

    total = cube.scan[0] * cube.scan[1]
    try:
        # The UDF runs here, in the receiving thread. LiberTEM sets PyTorch's (process-wide) thread count to
        # its executor's while a task runs: the mapping's count, so the mapping keeps its speed.
        ctx = LiveContext(executor=InlineJobExecutor(inline_threads=torch.get_num_threads()))
        with ctx.make_connection(detector).open(api_host=host, api_port=api_port, data_host=host,
                                                data_port=port) as conn:
            pending = None
            if detector == "merlin":
                pending = conn.wait_for_acquisition(timeout)
                if pending is None:
                    raise DetectorGone(f"no acquisition started within {timeout:g} s")
            # A partition per scan row: frames reach the recorder (and the maps) row by row.
            aq = ctx.make_acquisition(conn=conn, pending_aq=pending, nav_shape=cube.scan,
                                      frames_per_partition=cube.scan[1])
            for _ in ctx.run_udf_iter(dataset=aq, udf=Frames()):
                while received:
                    first, frames = received.pop(0)
                    if frames.shape[1:] != cube.shape[2:]:
                        raise DetectorGone(f"the detector sends {frames.shape[1]}x{frames.shape[2]} frames but "
                                           f"the model maps {cube.shape[2]}x{cube.shape[3]}")
                    cube.record(first, frames)
        cube.end(None if cube.arrived == total else f"the detector sent {cube.arrived} of {total} frames")
    except Exception as e:  # noqa: BLE001 -- the maps so far are kept; the mapping side reports it
        cube.end(f"the detector connection at {host}:{port} failed after {cube.arrived} of {total} frames: "
                 f"{type(e).__name__}: {e}")


def live_strain(bundle, out_dir, source, scan: tuple[int, int], *, reference=None, reference_phase=None,
                per_phase: bool = False, frame: dict | None = None, rows: int | None = None, device: str = "cpu",
                progress: bool = False, on_start=None, stall: float = 60.0) -> dict:
    """Map a scan with a strain bundle while ``source(cube)`` (run in its
    own thread; :func:`receive` with the detector's settings) records its
    frames, and write
    the same results and figures as ``stemae predict OUT/frames.zarr``.

    ``on_start(cube)`` is called once the frames store exists (the live
    view reads from there); ``stall`` is how long to wait for the next
    frame (the first one included) before giving up. Raises :class:`DetectorGone` when the detector
    stops early: the frames and the mapped blocks are kept in ``out_dir``.
    """
    from stemae.data.readers import Datacube
    from stemae.nn.bundle import bundle_kind, bundle_provenance
    from stemae.strain import ccstae, classical
    from stemae.strain.run import predict_classical, predict_strain

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bundle_kind(bundle) == classical.KIND:
        state, pattern_shape = classical.load_state(bundle)
        model = None
    else:
        model = ccstae.load(bundle)
        pattern_shape = model.pattern_shape
    cube = LiveCube(open_frames(out_dir, scan, pattern_shape), scan, stall)
    receiver = threading.Thread(target=source, args=(cube,), name="stemae-receive", daemon=True)
    receiver.start()
    if on_start is not None:
        on_start(cube)
    datacube = Datacube(cube, source=str(out_dir / FRAMES))
    # Blocks of one batch (256 patterns) by default: a block is mapped as soon as its rows are in.
    rows = rows or -(-LIVE_BATCH // scan[1])
    provenance = bundle_provenance(bundle)
    if model is None:
        res = predict_classical(state, datacube, out_dir, reference=reference, frame=frame, progress=progress,
                                bundle=provenance, rows=rows)
    else:
        res = predict_strain(model, datacube, out_dir, reference=reference, reference_phase=reference_phase,
                             per_phase=per_phase, frame=frame, device=device, progress=progress,
                             bundle=provenance, rows=rows)
    receiver.join(5.0)
    return res
