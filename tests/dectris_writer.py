"""DECTRIS streams for tests: a recording of one SIMPLON stream (version 1)
acquisition, as LiberTEM-live's DECTRIS simulator replays it. Each ZeroMQ
message part is stored as its length (int64, little-endian) and its bytes:
the series header and the detector configuration (JSON), then per frame its
image header, data header, LZ4-compressed image and timing part, then the
series end."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import lz4.block
import numpy as np


def write_stream(path, frames: np.ndarray) -> Path:
    """Record ``frames`` (N, H, W) counts (clipped to uint16) as one
    externally triggered series of N frames."""
    path = Path(path)
    frames = np.clip(np.rint(frames), 0, 65535).astype("<u2")
    n, h, w = frames.shape
    with open(path, "wb") as f:
        def part(obj):
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            f.write(struct.pack("<q", len(data)) + data)

        part({"htype": "dheader-1.0", "header_detail": "basic", "series": 1})
        part({"x_pixels_in_detector": w, "y_pixels_in_detector": h, "bit_depth_image": 16, "count_time": 0.001,
              "frame_time": 0.001, "nimages": 1, "ntrigger": n, "trigger_mode": "exte", "compression": "lz4"})
        for i, frame in enumerate(frames):
            part({"htype": "dimage-1.0", "series": 1, "frame": i, "hash": f"{i:032x}"})
            part({"htype": "dimage_d-1.0", "shape": [w, h], "type": "uint16", "encoding": "lz4<"})
            part(lz4.block.compress(frame.tobytes(), store_size=False))
            part({"htype": "dconfig-1.0", "start_time": i, "stop_time": i + 1, "real_time": 1})
        part({"htype": "dseries_end-1.0", "series": 1})
    return path
