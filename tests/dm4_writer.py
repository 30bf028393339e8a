"""A minimal Gatan DigitalMicrograph 4 (.dm4) writer, for tests only.

Writes the tag tree a DM4 reader needs for one image: ImageList / ImageData
with Data, DataType, Dimensions and per-axis Calibrations. Header and tag
structure are big-endian; tag data are little-endian.
"""

import struct

import numpy as np

_DM_DTYPE = {np.dtype("float32"): (2, 6), np.dtype("uint16"): (10, 4), np.dtype("int32"): (7, 3)}


def _name(tag_id: int, name: str) -> bytes:
    b = name.encode()
    return struct.pack(">bh", tag_id, len(b)) + b


def _data_tag(name: str, info: list[int], payload: bytes) -> bytes:
    body = b"%%%%" + struct.pack(">q", len(info)) + b"".join(struct.pack(">q", i) for i in info) + payload
    return _name(21, name) + struct.pack(">q", len(body)) + body


def _group(name: str, tags: list[bytes]) -> bytes:
    body = b"".join(tags)
    return _name(20, name) + struct.pack(">bbqq", 0, 1, len(body), len(tags)) + body


def _f32(name, v):
    return _data_tag(name, [6], struct.pack("<f", v))


def _i32(name, v):
    return _data_tag(name, [3], struct.pack("<i", v))


def _text(name, s):
    return _data_tag(name, [20, 4, len(s)], s.encode("utf-16-le"))


def write_dm4(path, data: np.ndarray, scales, units) -> None:
    """Write ``data`` (C order, any dimensionality) with per-axis ``scales``
    and ``units`` (given in array order)."""
    data = np.ascontiguousarray(data)
    dm_type, el_type = _DM_DTYPE[data.dtype]
    dims = data.shape[::-1]  # DM lists the fastest axis first
    cal = [_group("", [_f32("Origin", 0.0), _f32("Scale", s), _text("Units", u)])
           for s, u in zip(scales[::-1], units[::-1])]
    image_data = _group("ImageData", [
        _group("Calibrations", [
            _group("Brightness", [_f32("Origin", 0.0), _f32("Scale", 1.0), _text("Units", "")]),
            _group("Dimension", cal),
        ]),
        _data_tag("Data", [20, el_type, data.size], data.astype(data.dtype.newbyteorder("<")).tobytes()),
        _i32("DataType", dm_type),
        _group("Dimensions", [_i32("", d) for d in dims]),
    ])
    image = _group("", [image_data, _group("ImageTags", []), _text("Name", "scan")])
    root_tags = [_group("ImageList", [image])]
    root = struct.pack(">bbq", 0, 1, len(root_tags)) + b"".join(root_tags)
    with open(path, "wb") as f:
        f.write(struct.pack(">iqi", 4, len(root) + 16, 1) + root + b"\0" * 8)
