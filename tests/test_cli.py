import numpy as np
import pytest
from typer.testing import CliRunner

from stemae.cli import app
from stemae.data import read_results
from stemae.strain.evaluate import strain_errors, truth_strain_maps

runner = CliRunner()


def test_help_explains_options():
    r = runner.invoke(app, ["strain", "--help"])
    assert r.exit_code == 0
    for opt in ("--method", "--reference", "--out", "--dataset", "--scan-shape"):
        assert opt in r.output


def test_simulate_then_strain_end_to_end(tmp_path):
    data = tmp_path / "het.h5"
    r = runner.invoke(app, ["simulate", str(data), "--scan", "24x24", "--pattern", "128x128", "--dose", "1e5"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "res"
    r = runner.invoke(app, ["strain", str(data), "--out", str(out), "--method", "xcorr",
                            "--reference", "0:24,0:4", "--no-progress"])
    assert r.exit_code == 0, r.output
    arrays, attrs = read_results(out / "strain.zarr")
    for k in ("e_xx", "e_yy", "e_xy", "theta", "valid", "g1", "g2", "origin", "reference"):
        assert k in arrays
    assert arrays["e_xx"].shape == (24, 24) and arrays["g1"].shape == (24, 24, 2)
    assert attrs["arrays"]["theta"]["units"] == "deg"
    assert "clockwise on screen" in attrs["conventions"]
    assert attrs["calibration"]["q_units"] == "1/A"
    for png in ("strain_maps.png", "reference_lattice.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The maps are right, not just present.
    from stemae.data import read_datacube

    truth = read_datacube(data).extra["truth"]
    ref = ((0, 24), (0, 4))
    err = strain_errors(arrays, truth_strain_maps(truth, ref, np.asarray(attrs["reference_basis_px"])), arrays["valid"])
    assert err["e_xx"] < 1e-3 and err["theta"] < 0.1

    # Diagnostics: virtual images, mean and maximum pattern, Bragg vector map.
    raw = np.asarray(read_datacube(data).data, dtype=np.float64)
    np.testing.assert_allclose(arrays["mean_pattern"], raw.mean((0, 1)), rtol=1e-5)
    np.testing.assert_array_equal(arrays["max_pattern"], raw.max((0, 1)))
    x0, y0 = arrays["origin"][7, 9]
    yy, xx = np.mgrid[0:128, 0:128]
    inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= attrs["disk_radius_px"] ** 2
    assert arrays["virtual_bf"][7, 9] == pytest.approx(raw[7, 9][inside].sum(), rel=1e-5)
    assert 0 < arrays["virtual_df"][7, 9] < raw[7, 9].sum() - arrays["virtual_bf"][7, 9]
    h, k = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3))
    pts = (h.ravel()[None, :, None] * arrays["g1"][arrays["valid"]][:, None]
           + k.ravel()[None, :, None] * arrays["g2"][arrays["valid"]][:, None] + 64)
    on_detector = ((pts > -0.5) & (pts < 127.5)).all(-1).sum()
    assert arrays["bragg_vector_map"].sum() == on_detector > 20 * arrays["valid"].sum()
    assert (out / "diagnostics.png").exists()
    # Any position's pattern with its fitted lattice.
    r = runner.invoke(app, ["show", str(data), "--results", str(out), "--at", "7,9"])
    assert r.exit_code == 0, r.output
    assert (out / "pattern_7_9.png").exists() and f"e_xx {arrays['e_xx'][7, 9]:+.4f}" in r.output
    r = runner.invoke(app, ["show", str(data), "--results", str(out), "--at", "7,99"])
    assert r.exit_code == 2 and "outside the 24x24 scan" in r.output

    # A second run replaces the store atomically and leaves no temporary files.
    r = runner.invoke(app, ["strain", str(data), "--out", str(out), "--method", "com", "--no-progress"])
    # The whole scan holds two phases: no lattice to measure against.
    assert r.exit_code == 2 and "the reference region holds more than one lattice" in r.output
    assert "Traceback" not in r.output and read_results(out / "strain.zarr")[1]["method"] == "xcorr"
    r = runner.invoke(app, ["strain", str(data), "--out", str(out), "--method", "com", "--no-progress",
                            "--reference", "0:24,0:4"])
    assert r.exit_code == 0, r.output
    assert read_results(out / "strain.zarr")[1]["method"] == "com"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["strain", "missing.h5"], "no such file"),
        (["strain", "{d}", "--method", "magic"], "unknown method 'magic'"),
        (["strain", "{d}", "--reference", "5-9"], "R0:R1,C0:C1"),
        (["strain", "{d}", "--reference", "0:4,90:99"], "selects no scan position"),
        (["strain", "{bad}"], "row 1, col 2) contains NaN"),
        (["strain", "{d}", "--mask", "{d}x.npy"], "--mask {d}x.npy: no such file"),
        (["strain", "{d}", "--dark", "{d}"], "--dark {d} is 4x4x64x64 but the patterns are 64x64"),
        (["strain", "{d}", "--bin", "0"], "--bin 0: must be at least 1"),
        (["strain", "{d}", "--method", "xcorr", "--classes", "2"], "--classes apply to ccstae only, not to xcorr"),
        (["strain", "{d}", "--classes", "0"], "--classes must be at least 1"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, args, message):
    from stemae.simulate import heterostructure

    sim = heterostructure((4, 4), (64, 64), dose=None)
    d = tmp_path / "d.npy"
    np.save(d, sim.data)
    bad = sim.data.copy()
    bad[1, 2] = np.nan  # a whole pattern: nothing to fill it from
    np.save(tmp_path / "bad.npy", bad)
    args = [a.format(d=d, bad=tmp_path / "bad.npy") for a in args] + ["--out", str(tmp_path / "o")]
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert message.format(d=d) in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "o" / "strain.zarr").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["strain", "{missing}", "--out", "{file}"], "exists and is not a folder"),
        (["strain", "{missing}", "--out", "{file}/sub"], "is a file"),
        (["predict", "{missing}", "--model", "{missing}", "--out", "{file}"], "exists and is not a folder"),
        (["train", "{missing}", "--model", "{file}"], "exists and is not a folder"),
        (["train", "{missing}", "--model", "{folder}"], "did not write; refusing to replace it"),
        (["simulate", "{folder}"], "is a folder"),
        (["simulate-domains", "{file}"], "exists and is not a folder"),
        (["domains", "{missing}", "--out", "{file}"], "exists and is not a folder"),
        (["demo", "--out", "{file}"], "exists and is not a folder"),
    ],
)
def test_outputs_are_checked_before_anything_is_read(tmp_path, args, message):
    """A bad output path is refused before the input is even opened (the
    input here does not exist, and the error is about the output), with no
    traceback, nothing written and nothing of the user's replaced."""
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep me too")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [a.format(missing=tmp_path / "missing.h5", file=tmp_path / "file", folder=tmp_path / "folder")
            for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "file").read_text() == "keep me"


def test_strain_along_a_chosen_axis(tmp_path):
    """--strain-axis 90 reports the same lattice with x and y exchanged;
    the store says which axes its maps are in."""
    from stemae.simulate import heterostructure

    np.save(tmp_path / "d.npy", heterostructure((8, 8), (128, 128), dose=1e5, seed=3).data)
    runs = {}
    for axis in ("0", "90"):
        out = tmp_path / f"axis{axis}"
        r = runner.invoke(app, ["strain", str(tmp_path / "d.npy"), "--method", "xcorr", "--reference", "0:8,0:2",
                                "--strain-axis", axis, "--out", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output
        runs[axis] = read_results(out / "strain.zarr")
    (a, _), (b, attrs) = runs["0"], runs["90"]
    assert attrs["strain_frame"] == {"strain_axis": 90.0, "scan_rotation": 0.0, "flip": False}
    np.testing.assert_allclose(b["e_xx"], a["e_yy"], atol=1e-6)
    np.testing.assert_allclose(b["e_xy"], -a["e_xy"], atol=1e-6)
    np.testing.assert_allclose(b["theta"], a["theta"], atol=1e-4)


def test_version():
    from stemae import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"stemae {__version__}"


def test_raw_data_options(tmp_path):
    """--dark, --mask and --bin from the command line: a scan with a
    pedestal, hot pixels and a NaN maps as well as the clean scan, binned."""
    from stemae.simulate import heterostructure

    sim = heterostructure((8, 8), (128, 128), dose=1e5, seed=2)
    raw = sim.data.astype(np.float32) + 100
    raw[:, :, 30, 40] = 1e7
    raw[3, 3, 64, 64] = np.nan
    np.save(tmp_path / "raw.npy", raw)
    mask = np.zeros((128, 128), np.uint8)
    mask[30, 40] = 1
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "o"
    r = runner.invoke(app, ["strain", str(tmp_path / "raw.npy"), "--method", "xcorr", "--reference", "0:8,0:2",
                            "--dark", "100", "--mask",
                            str(tmp_path / "mask.npy"), "--bin", "2", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    arrays, attrs = read_results(out / "strain.zarr")
    assert attrs["pattern_shape"] == [64, 64] and "dark 100.0, 1 masked pixels, bin 2" in attrs["source"]
    truth = truth_strain_maps(sim.truth, ((0, 8), (0, 2)), np.asarray(attrs["reference_basis_px"]))
    err = strain_errors(arrays, truth, arrays["valid"])
    assert arrays["valid"].all() and max(err[k] for k in ("e_xx", "e_yy", "e_xy")) < 2e-3


def test_calibrated_lattice_in_angstrom(tmp_path):
    """The reference lattice in angstrom: from the file's calibration, from
    --q-pixel-size in 1/A on a bare .npy, and in mrad with --energy, all
    within 0.2 % of the simulated WS2 lattice (its mean over the reference
    region, a = 3.153 A less the region's own small strain)."""
    from stemae.data import read_datacube
    from stemae.data.calibration import electron_wavelength, lattice_in_angstrom

    data = tmp_path / "het.h5"
    assert runner.invoke(app, ["simulate", str(data), "--scan", "16x16", "--dose", "1e5"]).exit_code == 0
    cube = read_datacube(data)
    truth, cal = cube.extra["truth"], cube.calibration
    G_true = np.stack([truth["g1"], truth["g2"]], -1)[:, :3].reshape(-1, 2, 2).mean(0)
    a_true = lattice_in_angstrom(G_true, cal.q_pixel_size)["a_A"]
    assert a_true == pytest.approx(3.153, rel=5e-3)
    np.save(tmp_path / "bare.npy", np.asarray(cube.data))
    q_mrad = float(cal.q_pixel_size * electron_wavelength(cal.beam_energy_kev) * 1e3)
    runs = {
        "file": [str(data)],
        "1/A": [str(tmp_path / "bare.npy"), "--q-pixel-size", f"{cal.q_pixel_size!r}/A"],
        "mrad": [str(tmp_path / "bare.npy"), "--q-pixel-size", f"{q_mrad!r}mrad", "--energy", "300"],
    }
    for name, args in runs.items():
        out = tmp_path / name.replace("/", "")
        r = runner.invoke(app, ["strain", *args, "--method", "xcorr", "--reference", "0:16,0:3", "--out", str(out),
                                "--no-progress"])
        assert r.exit_code == 0, r.output
        stored, attrs_run = read_results(out / "strain.zarr")
        lattice = attrs_run["reference_lattice"]
        assert lattice["a_A"] == pytest.approx(a_true, rel=2e-3), name
        np.testing.assert_allclose(stored["g1_inv_A"], stored["g1"] * cal.q_pixel_size, rtol=1e-5)
        assert lattice["b_A"] == pytest.approx(a_true, rel=2e-3) and lattice["gamma_deg"] == pytest.approx(120, abs=0.2)
        assert f"a = {lattice['a_A']:.4f} A" in r.output
    # HyperSpy opens the exported maps with the scan calibrated (0.5 nm steps).
    import hyperspy.api as hs
    r = runner.invoke(app, ["export", str(tmp_path / "file")])
    assert r.exit_code == 0, r.output
    arrays = read_results(tmp_path / "file" / "strain.zarr")[0]
    sig = hs.load(tmp_path / "file" / "strain.hspy")
    assert sig.data.shape == (4, 16, 16) and sig.axes_manager.navigation_shape == (4,)
    for ax in sig.axes_manager.signal_axes:
        assert ax.scale == pytest.approx(cal.r_pixel_size) and ax.units == cal.r_units
    np.testing.assert_array_equal(sig.data[0], np.where(arrays["valid"], arrays["e_xx"], np.nan))
    assert hs.load(tmp_path / "file" / "strain_sigma.hspy").data.shape == (4, 16, 16)
    # Without a calibration the lengths stay in pixels, and the user is told.
    r = runner.invoke(app, ["strain", str(tmp_path / "bare.npy"), "--method", "xcorr", "--reference", "0:16,0:3",
                            "--out", str(tmp_path / "px"), "--no-progress"])
    assert r.exit_code == 0 and "no detector calibration" in r.output
    assert "reference_lattice" not in read_results(tmp_path / "px" / "strain.zarr")[1]
    for args, message in ((["--q-pixel-size", "0.2mrad"], "needs the beam energy"),
                          (["--q-pixel-size", "0.2furlongs"], "must be a positive number with units"),
                          (["--scan-step", "-3nm"], "must be a positive number with units")):
        r = runner.invoke(app, ["strain", str(tmp_path / "bare.npy"), *args, "--out", str(tmp_path / "e")])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def _distort(image, D, center):
    """``image`` (..., Qy, Qx) as a detector with distortion ``D`` (2x2 on
    (x, y) about ``center`` (x, y)) records it."""
    from scipy import ndimage

    P = np.array([[0, 1], [1, 0]])
    M = P @ np.linalg.inv(D) @ P
    c = np.asarray(center, float)[::-1]
    flat = image.reshape(-1, *image.shape[-2:])
    out = [ndimage.affine_transform(f, M, offset=c - M @ c, order=1) for f in flat]
    return np.array(out).reshape(image.shape)


def test_elliptical_distortion_measured_on_a_ring_and_removed(tmp_path):
    """A detector that squeezes circles into ellipses (3 %, major axis at
    25 degrees) biases the lattice parameters; fit-ellipse measures the
    distortion on a ring pattern, and --ellipse brings the lattice back to
    within 0.2 % of the undistorted detector's."""
    from stemae.data import write_datacube
    from stemae.data.calibration import ellipse_matrix
    from stemae.simulate import heterostructure

    D = ellipse_matrix(1.03, 25.0)
    yy, xx = np.mgrid[0:128, 0:128]
    r = np.hypot(xx - 64, yy - 64)
    ring = np.random.default_rng(1).poisson(400 * np.exp(-0.5 * ((r - 40) / 2) ** 2) + 300 * np.exp(-0.5 * (r / 4) ** 2)
                                            + 3)
    np.save(tmp_path / "ring.npy", _distort(ring.astype(np.float32), D, (64, 64)))
    r = runner.invoke(app, ["fit-ellipse", str(tmp_path / "ring.npy"), "--radii", "30,50"])
    assert r.exit_code == 0, r.output
    option = r.output.split("--ellipse ")[1].split()[0]
    ratio, angle = map(float, option.split(","))
    assert ratio == pytest.approx(1.03, abs=3e-3) and angle == pytest.approx(25, abs=2)

    sim = heterostructure((12, 12), (128, 128), dose=None, seed=5)
    write_datacube(tmp_path / "flat.h5", sim.data, sim.calibration)
    write_datacube(tmp_path / "squeezed.h5", _distort(sim.data.astype(np.float32), D, (64, 64)), sim.calibration)
    a = {}
    for name, args in (("flat", ["flat.h5"]), ("squeezed", ["squeezed.h5"]),
                       ("corrected", ["squeezed.h5", "--ellipse", option])):
        r = runner.invoke(app, ["strain", str(tmp_path / args[0]), *args[1:], "--method", "xcorr", "--reference",
                                "0:12,0:2", "--out", str(tmp_path / name), "--no-progress"])
        assert r.exit_code == 0, r.output
        a[name] = read_results(tmp_path / name / "strain.zarr")[1]["reference_lattice"]
    assert abs(a["squeezed"]["a_A"] / a["flat"]["a_A"] - 1) > 0.004 or abs(a["squeezed"]["b_A"] / a["flat"]["b_A"] - 1) > 0.004
    for k in ("a_A", "b_A"):
        assert a["corrected"][k] == pytest.approx(a["flat"][k], rel=2e-3), k
    assert a["corrected"]["gamma_deg"] == pytest.approx(a["flat"]["gamma_deg"], abs=0.2)


def test_info_reads_without_loading(tmp_path):
    d = tmp_path / "s.zarr"
    assert runner.invoke(app, ["simulate", str(d), "--scan", "3x5", "--pattern", "64x80", "--dose", "0"]).exit_code == 0
    r = runner.invoke(app, ["info", str(d)])
    assert r.exit_code == 0 and "(3, 5, 64, 80)" in r.output and "q_pixel_size" in r.output


def test_train_then_predict_with_a_bundle(tmp_path):
    data = tmp_path / "het.h5"
    assert runner.invoke(app, ["simulate", str(data), "--scan", "16x16", "--dose", "1e5"]).exit_code == 0
    model = tmp_path / "model"
    r = runner.invoke(app, ["train", str(data), "--model", str(model), "--classes", "2", "--epochs", "2",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (model / "config.json").exists() and (model / "weights.safetensors").exists()
    out = tmp_path / "res"
    r = runner.invoke(app, ["predict", str(data), "--model", str(model), "--out", str(out),
                            "--reference", "0:16,0:3", "--no-progress"])
    assert r.exit_code == 0, r.output
    arrays, attrs = read_results(out / "strain.zarr")
    assert attrs["method"] == "ccstae"
    assert arrays["probabilities"].shape == (16, 16, 2) and arrays["bases"].shape == (2, 2, 2)
    # The store says which bundle made it, by path and by its weights' checksum.
    import hashlib

    assert attrs["bundle"]["path"] == str(model.resolve())
    assert attrs["bundle"]["weights_sha256"] == hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest()
    assert attrs["command"].split()[0] and attrs["stemae_version"] and attrs["source"].startswith(str(data))
    from stemae.data import read_datacube

    truth = read_datacube(data).extra["truth"]
    assert (arrays["phase"] == truth["phase"]).mean() > 0.95
    for png in ("strain_maps.png", "phase_map.png", "bases.png"):
        assert (out / png).exists()
    # The reference chosen by phase: every position of the left phase, and
    # that phase's strain measured against its own lattice.
    left = int(arrays["phase"][0, 0])
    r = runner.invoke(app, ["predict", str(data), "--model", str(model), "--out", str(tmp_path / "byphase"),
                            "--reference-phase", str(left), "--no-progress"])
    assert r.exit_code == 0, r.output
    by_phase = read_results(tmp_path / "byphase" / "strain.zarr")[0]
    np.testing.assert_array_equal(by_phase["reference"], arrays["phase"] == left)
    mine = truth["phase"] == truth["phase"][0, 0]
    err = strain_errors(by_phase, truth_strain_maps(truth, mine, np.asarray(
        read_results(tmp_path / "byphase" / "strain.zarr")[1]["reference_basis_px"])), by_phase["valid"] & mine)
    assert err["e_xx"] < 2e-3
    # A reference per phase: each phase against its own lattice, and the
    # mismatch between them (WSe2 is 4.1 % larger than WS2 in the simulator,
    # less the strain the interface puts into each).
    r = runner.invoke(app, ["predict", str(data), "--model", str(model), "--out", str(tmp_path / "perphase"),
                            "--reference-per-phase", "--no-progress"])
    assert r.exit_code == 0, r.output
    per, per_attrs = read_results(tmp_path / "perphase" / "strain.zarr")
    refs = per_attrs["phase_references"]
    assert len(refs) == 2 and abs(refs[0]["mismatch"]["e_xx"]) < 1e-12
    other = refs[1]["mismatch"]
    from stemae.geometry import deformation_from_reciprocal, strain_from_deformation

    G_true = np.stack([truth["g1"], truth["g2"]], -1)
    first = truth["phase"] == (truth["phase"][0, 0] if refs[0]["phase"] == left else 1 - truth["phase"][0, 0])
    expected = strain_from_deformation(deformation_from_reciprocal(G_true[~first].mean(0), G_true[first].mean(0)))
    assert abs(expected["e_xx"]) > 0.03
    for c in ("e_xx", "e_yy", "e_xy"):
        assert other[c] == pytest.approx(expected[c], abs=3e-3), c
    for k in (0, 1):
        mine = truth["phase"] == k
        G_k = np.asarray(refs[[rr["phase"] for rr in refs].index(int(np.bincount(arrays["phase"][mine]).argmax()))]
                         ["basis_px"])
        err = strain_errors(per, truth_strain_maps(truth, mine, G_k), per["valid"] & mine)
        assert err["e_xx"] < 3e-3, k
    for args, message in ((["--reference-phase", "7"], "reference phase 7 does not exist"),):
        r = runner.invoke(app, ["predict", str(data), "--model", str(model), "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and message in r.output
    r = runner.invoke(app, ["strain", str(data), "--method", "xcorr", "--reference-phase", "0", "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 2 and "xcorr has none" in r.output
    # A datacube of another detector size is refused with a clear message.
    other = tmp_path / "other.h5"
    assert runner.invoke(app, ["simulate", str(other), "--scan", "2x2", "--pattern", "96x96"]).exit_code == 0
    r = runner.invoke(app, ["predict", str(other), "--model", str(model), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "made on 128x128" in r.output


def test_ccstae_is_the_default_and_writes_its_extras(tmp_path):
    data = tmp_path / "het.zarr"
    assert runner.invoke(app, ["simulate", str(data), "--scan", "12x12", "--dose", "1e5"]).exit_code == 0
    out = tmp_path / "res"
    r = runner.invoke(app, ["strain", str(data), "--out", str(out), "--no-progress", "--epochs", "2",
                            "--reference", "0:12,0:2"])
    assert r.exit_code == 0, r.output
    arrays, attrs = read_results(out / "strain.zarr")
    assert attrs["method"] == "ccstae" and len(arrays["loss"]) == 2
    assert attrs["disk_profile"] == "voigt" and attrs["training"]["indexing"]["ok"]
    for k in ("e_xx", "e_yy", "e_xy", "theta"):
        s = arrays[f"sigma_{k}"][arrays["valid"]]
        assert np.isfinite(s).all() and (s > 0).all()
    J = len(arrays["hk"])
    assert arrays["disk_intensity"].shape == (12, 12, J) and np.nanmedian(arrays["disk_intensity"]) > 0
    for png in ("loss.png", "uncertainty_maps.png", "virtual_dark_field.png", "reference_lattice.png"):
        assert (out / png).exists()
    # The trained model is kept beside its results, and the store names it.
    from stemae.strain import ccstae

    assert ccstae.load(out / "model").K == 1 and attrs["bundle"]["path"] == str((out / "model").resolve())
    # A classical run into the same folder leaves no figure of the earlier
    # method behind (the model stays: it is the user's).
    r = runner.invoke(app, ["strain", str(data), "--out", str(out), "--no-progress", "--method", "xcorr",
                            "--reference", "0:12,0:2"])
    assert r.exit_code == 0, r.output
    assert read_results(out / "strain.zarr")[1]["method"] == "xcorr"
    assert (out / "strain_maps.png").exists() and (out / "model" / "config.json").exists()
    for png in ("loss.png", "virtual_dark_field.png", "phase_map.png", "bases.png"):
        assert not (out / png).exists()
    # The measured profiles instead of their pseudo-Voigt fits.
    r = runner.invoke(app, ["strain", str(data), "--out", str(tmp_path / "t"), "--no-progress", "--epochs", "1",
                            "--refine", "template", "--reference", "0:12,0:2"])
    assert r.exit_code == 0, r.output
    assert read_results(tmp_path / "t" / "strain.zarr")[1]["disk_profile"] == "template"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_requested_without_gpu(tmp_path):
    d = tmp_path / "d.h5"
    assert runner.invoke(app, ["simulate", str(d), "--scan", "4x4"]).exit_code == 0
    r = runner.invoke(app, ["strain", str(d), "--device", "cuda", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no CUDA GPU" in r.output


def test_domains_series_end_to_end(tmp_path):
    import csv

    sim = tmp_path / "series"
    r = runner.invoke(app, ["simulate-domains", str(sim), "--temperatures", "25,175", "--size", "384x384",
                            "--regions", "6", "--seed", "3"])
    assert r.exit_code == 0, r.output
    frames = [sim / "frame_25C.tif", sim / "frame_175C.tif"]
    truth = np.load(sim / "truth.npz")
    out = tmp_path / "dom"
    r = runner.invoke(app, ["domains", *map(str, frames), "--labels", "25,175", "--out", str(out),
                            "--epochs", "6", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"windows of {read_results(out / 'domains.zarr')[1]['window']} px (sized from periods" in r.output
    assert "domain-free" in r.output
    for name in ("domains.zarr", "fractions.csv", "fractions.png", "segmentation.png", "latent_maps.png",
                 "loss.png", "model/config.json", "model/weights.safetensors"):
        assert (out / name).exists(), name
    arrays, attrs = read_results(out / "domains.zarr")
    assert arrays["segmentation"].shape == (2,) + arrays["centres"].shape[:2]
    assert attrs["labels"] == [25.0, 175.0] and attrs["frames"] == ["frame_25C.tif", "frame_175C.tif"]
    rows = list(csv.DictReader(open(out / "fractions.csv")))
    assert [float(r["label"]) for r in rows] == [25.0, 175.0]
    # At 175 C most of the field is domain-free (type 0 by construction of the ordering).
    free_truth = (truth["labels"] == 0).mean((1, 2))
    free = [float(r["fraction_0"]) for r in rows]
    np.testing.assert_allclose(free, free_truth, atol=0.1)
    assert free[1] > free[0]
    # Transfer: the saved model maps the series again without training.
    again = tmp_path / "again"
    r = runner.invoke(app, ["domains", *map(str, frames), "--init", str(out / "model"), "--epochs", "0",
                            "--out", str(again), "--no-progress"])
    assert r.exit_code == 0, r.output
    again_attrs = read_results(again / "domains.zarr")[1]
    assert again_attrs["window"] == attrs["window"]
    assert again_attrs["init"]["path"] == str((out / "model").resolve())
    # The bundle's own types, labelled per frame: one frame alone gets the
    # same types with the same numbers.
    alone = tmp_path / "alone"
    r = runner.invoke(app, ["domains", str(frames[1]), "--init", str(out / "model"), "--epochs", "0", "--same-types",
                            "--out", str(alone), "--no-progress"])
    assert r.exit_code == 0, r.output
    alone_arrays, alone_attrs = read_results(alone / "domains.zarr")
    assert alone_attrs["type_angles"] == attrs["type_angles"]
    assert (alone_arrays["segmentation"][0] == arrays["segmentation"][1]).mean() > 0.95
    r = runner.invoke(app, ["domains", str(frames[1]), "--same-types", "--out", str(alone), "--no-progress"])
    assert r.exit_code == 2 and "--same-types needs --init" in r.output


def test_domains_bad_input_is_one_clear_error(tmp_path):
    img = tmp_path / "small.npy"
    np.save(img, np.ones((40, 40), np.float32))
    r = runner.invoke(app, ["domains", str(img), "--window", "64", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "window 64 px is larger than the image (40x40 px)" in r.output
    assert not (tmp_path / "o" / "domains.zarr").exists()
