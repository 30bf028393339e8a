"""Quantum Detectors Merlin files for tests: a ``.mib`` of 16-bit frames,
each after its 384-byte frame header, and the ``.hdr`` acquisition header,
the layout the Merlin software writes for one 1x1 chip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = 384


def write_mib(path, frames: np.ndarray, scan: tuple[int, int]) -> tuple[Path, Path]:
    """Write ``frames`` (N, H, W) counts (clipped to uint16) as ``path``
    (.mib) and its .hdr; ``scan`` is (rows, columns) with rows x columns =
    N. Returns the two paths."""
    path = Path(path)
    frames = np.clip(np.rint(frames), 0, 65535).astype(">u2")
    n, h, w = frames.shape
    assert n == scan[0] * scan[1]
    with open(path, "wb") as f:
        for i, frame in enumerate(frames):
            fields = ["MQ1", f"{i + 1:06d}", f"{HEADER:05d}", "01", f"{w:04d}", f"{h:04d}", "U16", "   1x1", "01",
                      "2026-11-27 12:00:00.000000", "0.001000", "0", "0", "0", "1.200000E+2", "5.110000E+2",
                      *["0.000000E+0"] * 6, "3RX", "175,511,000,000,000,000,000,000,125,255,125,125,100,100,082,100,"
                      "087,030,128,004,255,129,128,176,168,511,511", "MQ1A", "2026-11-27T12:00:00.000000000Z",
                      "1000000ns", "12", ""]
            head = ",".join(fields).encode("ascii")
            f.write(head + b"\x00" * (HEADER - len(head)))
            f.write(frame.tobytes())
    hdr = path.with_suffix(".hdr")
    hdr.write_text("HDR,\t\n"
                   "Time and Date Stamp (day, mnth, yr, hr, min, s):\t27/11/2026 12:00:00\n"
                   "Chip ID:\tW0_A0,-,-,-\n"
                   "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX\n"
                   "Assembly Size (NX1, 2X2):\t   1x1\n"
                   "Chip Mode  (SPM, CSM, CM, CSCM):\tSPM\n"
                   "Counter Depth (number):\t12\n"
                   f"Frames in Acquisition (Number):\t{n}\n"
                   f"Frames per Trigger (Number):\t{scan[1]}\n"
                   "Trigger Start (Positive, Negative, Internal):\tInternal\n"
                   "End\t")
    return path, hdr
