import os

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr

from stemae.data import Calibration, read_datacube, read_results, write_datacube, write_results
from stemae.runner import read_block
from stemae.errors import InputError


def _check(cube, ref):
    assert isinstance(cube.data, da.Array)
    assert cube.data.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(cube.data), ref)


def test_npy_is_lazy(tmp_path, small_cube):
    p = tmp_path / "cube.npy"
    np.save(p, small_cube)
    _check(read_datacube(p), small_cube)


def test_hdf5_named_and_single_dataset_with_calibration(tmp_path, small_cube):
    p = tmp_path / "cube.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("scan/frames", data=small_cube)
        d.attrs.update(q_pixel_size=0.02, q_units="1/A", r_pixel_size=0.4, r_units="nm")
        f.create_dataset("other", data=np.zeros(3))
    cube = read_datacube(p, dataset="scan/frames")
    _check(cube, small_cube)
    assert cube.calibration.q_pixel_size == pytest.approx(0.02)
    assert cube.calibration.r_units == "nm"
    _check(read_datacube(p), small_cube)  # the only 4D dataset is found


def test_py4dstem_emd_layout(tmp_path, small_cube):
    # The layout py4DSTEM 0.14 (emdfile, EMD 1.0) writes for a DataCube.
    p = tmp_path / "p4.h5"
    with h5py.File(p, "w") as f:
        f.attrs.update(emd_group_type="file", version_major=1, version_minor=0, authoring_program="emdfile")
        root = f.create_group("datacube_root")
        root.attrs.update(emd_group_type="root", python_class="Root")
        g = root.create_group("datacube")
        g.attrs.update(emd_group_type="array", python_class="DataCube")
        g.create_dataset("data", data=small_cube).attrs["units"] = "pixel intensity"
        for i, (name, units) in enumerate([("Rx", "nm"), ("Ry", "nm"), ("Qx", "A^-1"), ("Qy", "A^-1")]):
            dim = g.create_dataset(f"dim{i}", data=np.array([0.0, 0.5 if i < 2 else 0.02]))
            dim.attrs.update(name=name, units=units)
        cal = root.create_group("metadatabundle").create_group("calibration")
        cal.attrs.update(emd_group_type="metadata", python_class="Calibration")
        for k, v in dict(Q_pixel_size=0.02, Q_pixel_units="A^-1", R_pixel_size=0.5, R_pixel_units="nm").items():
            cal.create_dataset(k, data=v)
    cube = read_datacube(p)
    _check(cube, small_cube)
    assert cube.calibration.q_pixel_size == pytest.approx(0.02)
    assert cube.calibration.q_units == "A^-1"
    assert cube.calibration.r_pixel_size == pytest.approx(0.5)
    _check(read_datacube(p, dataset="datacube_root/datacube"), small_cube)


def test_zarr_group_and_array(tmp_path, small_cube):
    p = tmp_path / "cube.zarr"
    write_datacube(p, small_cube, Calibration(q_pixel_size=0.03, q_units="1/A"), {"truth": {"phase": np.ones((3, 4))}})
    cube = read_datacube(p)
    _check(cube, small_cube)
    assert cube.calibration.q_pixel_size == pytest.approx(0.03)
    np.testing.assert_array_equal(cube.extra["truth"]["phase"], 1)
    arr_path = tmp_path / "bare.zarr"
    z = zarr.create_array(str(arr_path), shape=small_cube.shape, dtype="f4")
    z[...] = small_cube
    _check(read_datacube(arr_path), small_cube)


def _write_mib(path, frames):
    """A Quantum Detectors Merlin .mib file: per frame a 384-byte ASCII header
    then big-endian 16-bit counts, rows stored bottom-up."""
    n, h, w = frames.shape
    with open(path, "wb") as f:
        for i, fr in enumerate(frames):
            head = ",".join(
                ["MQ1", f"{i + 1:06d}", "00384", "01", f"{w:04d}", f"{h:04d}", "U16", "   1x1", "01",
                 "2024-01-01 10:00:00.000", "0.001000", "0", "0", "0",
                 "2024-01-01T10:00:00.000000000Z", "1000000ns", "0", ""]
            ).encode()
            f.write(head.ljust(384, b" "))
            f.write(fr[::-1].astype(">u2").tobytes())


def test_mib_through_rosettasciio(tmp_path, small_cube):
    p = tmp_path / "scan.mib"
    _write_mib(p, small_cube.reshape(12, 16, 20))
    cube = read_datacube(p, scan_shape=(3, 4))
    _check(cube, small_cube)


def test_blo_through_rosettasciio(tmp_path):
    from rsciio.blockfile import file_writer

    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, size=(3, 4, 16, 16), dtype=np.uint8)
    axes = [
        {"name": "y", "size": 3, "scale": 1.5, "offset": 0, "units": "nm", "navigate": True},
        {"name": "x", "size": 4, "scale": 1.5, "offset": 0, "units": "nm", "navigate": True},
        {"name": "ky", "size": 16, "scale": 0.05, "offset": 0, "units": "cm", "navigate": False},
        {"name": "kx", "size": 16, "scale": 0.05, "offset": 0, "units": "cm", "navigate": False},
    ]
    signal = {"data": data, "axes": axes, "metadata": {"General": {"title": "t"}}, "original_metadata": {},
              "attributes": {"_lazy": False}}
    p = tmp_path / "scan.blo"
    file_writer(str(p), signal, show_progressbar=False)
    cube = read_datacube(p)
    _check(cube, data)
    assert cube.calibration.r_pixel_size == pytest.approx(1.5)


# --- bad input: one clear message each ------------------------------------

def test_missing_and_empty_and_unknown(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_datacube(tmp_path / "nope.h5")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_datacube(tmp_path / "empty.npy")
    (tmp_path / "data.xyz").write_bytes(b"123")
    with pytest.raises(InputError, match="unknown file type '.xyz'"):
        read_datacube(tmp_path / "data.xyz")


def test_truncated_files(tmp_path, small_cube):
    p = tmp_path / "cube.npy"
    np.save(p, small_cube)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_datacube(p)
    h = tmp_path / "cube.h5"
    with h5py.File(h, "w") as f:
        f.create_dataset("data", data=small_cube)
    raw = h.read_bytes()
    h.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_datacube(h)


def test_wrong_dimensions_and_missing_dataset(tmp_path):
    p = tmp_path / "img.npy"
    np.save(p, np.zeros((5, 6)))
    with pytest.raises(InputError, match="expected a 4D datacube.*2 dimensions"):
        read_datacube(p)
    s = tmp_path / "stack.npy"
    np.save(s, np.zeros((12, 8, 8)))
    with pytest.raises(InputError, match="give the scan shape"):
        read_datacube(s)
    with pytest.raises(InputError, match="needs 15 patterns but the file holds 12"):
        read_datacube(s, scan_shape=(3, 5))
    assert read_datacube(s, scan_shape=(3, 4)).data.shape == (3, 4, 8, 8)
    h = tmp_path / "cube.h5"
    with h5py.File(h, "w") as f:
        f.create_dataset("a", data=np.zeros((2, 2, 4, 4)))
        f.create_dataset("b", data=np.zeros((2, 2, 4, 4)))
    with pytest.raises(InputError, match="no dataset 'c'"):
        read_datacube(h, dataset="c")
    with pytest.raises(InputError, match="cannot tell which dataset"):
        read_datacube(h)


def test_nan_and_inf_are_reported_with_position(small_cube):
    bad = small_cube.copy()
    bad[2, 1, 3, 3] = np.inf
    with pytest.raises(InputError, match=r"row 2, col 1\) contains NaN or Inf"):
        read_block(bad, 2, 4)


# --- results store: atomic, never half-written -----------------------------

def test_results_round_trip_and_atomic_replace(tmp_path):
    p = tmp_path / "strain.zarr"
    write_results(p, {"e_xx": (np.ones((2, 3), np.float32), "1", "strain", ("scan_y", "scan_x"))},
                  {"method": "xcorr"})
    arrays, attrs = read_results(p)
    assert attrs["method"] == "xcorr" and attrs["arrays"]["e_xx"]["units"] == "1"

    bad = {"e_xx": (np.zeros((2, 3)), "1", "x", ("a", "b")), "oops": (object(), "1", "not an array", ())}
    with pytest.raises(Exception):
        write_results(p, bad, {"method": "broken"})
    arrays, attrs = read_results(p)  # the good result is still there, untouched
    assert attrs["method"] == "xcorr"
    np.testing.assert_array_equal(arrays["e_xx"], 1)
    assert [q.name for q in tmp_path.iterdir()] == ["strain.zarr"]  # no leftovers


def test_results_store_is_zarr_format_2_with_dimension_names(tmp_path):
    """The store is in zarr's version 2 format, which zarr 2 (py4DSTEM's
    environments) reads as well as zarr 3: metadata in .zgroup/.zarray/.zattrs
    JSON, and each array's dimension names where xarray looks for them."""
    import json

    import zarr

    p = tmp_path / "strain.zarr"
    write_results(p, {"e_xx": (np.arange(6, dtype=np.float32).reshape(2, 3), "1", "strain", ("scan_y", "scan_x"))},
                  {"method": "xcorr"})
    assert json.loads((p / ".zgroup").read_text())["zarr_format"] == 2
    assert json.loads((p / "e_xx" / ".zarray").read_text())["shape"] == [2, 3]
    meta = json.loads((p / "e_xx" / ".zattrs").read_text())
    assert meta["_ARRAY_DIMENSIONS"] == ["scan_y", "scan_x"] and meta["units"] == "1"
    assert not (p / "zarr.json").exists()
    z = zarr.open_group(str(p), mode="r", zarr_format=2)
    np.testing.assert_array_equal(z["e_xx"][...], np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="1 dimension names for 2 dimensions"):
        write_results(tmp_path / "x.zarr", {"e": (np.zeros((2, 2)), "1", "", ("i",))})


def test_results_refuse_to_overwrite_foreign_data(tmp_path, small_cube):
    p = tmp_path / "mine.zarr"
    write_datacube(p, small_cube)
    with pytest.raises(InputError, match="not a stemae results store"):
        write_results(p, {"e": (np.zeros(2), "1", "", ("i",))})
    assert read_datacube(p).data.shape == small_cube.shape


def test_write_datacube_failure_keeps_old_file(tmp_path, small_cube):
    p = tmp_path / "cube.h5"
    write_datacube(p, small_cube)
    before = p.read_bytes()
    with pytest.raises(Exception):
        write_datacube(p, small_cube, groups={"truth": {"x": object()}})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["cube.h5"]


def test_dm4_through_rosettasciio(tmp_path, small_cube):
    from dm4_writer import write_dm4

    p = tmp_path / "scan.dm4"
    write_dm4(p, small_cube, [0.5, 0.5, 0.02, 0.02], ["nm", "nm", "1/nm", "1/nm"])
    cube = read_datacube(p)
    _check(cube, small_cube)
    assert cube.calibration.r_pixel_size == pytest.approx(0.5)
    assert cube.calibration.q_pixel_size == pytest.approx(0.02)
    assert cube.calibration.q_units == "1/nm"


def test_rosettasciio_messages_are_plain_text(capfd):
    """RosettaSciIO colours its log lines with terminal escape codes; once
    stemae has read a file through it they are plain lines on stderr."""
    import logging

    import rsciio

    from stemae.data.readers import _rsciio_plugin

    rsciio.set_log_level("WARNING")  # installs RosettaSciIO's coloured handler
    assert _rsciio_plugin(".mib") is not None
    logging.getLogger("rsciio.quantumdetector").warning("a header field is missing")
    err = capfd.readouterr().err
    assert "RosettaSciIO WARNING: a header field is missing" in err and "\x1b[" not in err
