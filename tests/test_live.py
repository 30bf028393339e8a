"""`stemae live` fed by LiberTEM-live's own Merlin simulator
(`libertem-live-mib-sim`, replaying a .mib file with its .hdr), against
the offline run on the same file; and the live page in headless Chromium."""

import shutil
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("libertem_live")

from mib_writer import write_mib  # noqa: E402
from peers import BIN, DectrisSim, MerlinSim, free_port  # noqa: E402


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 12x12 WS2/WSe2 scan of 64x64 patterns as a Merlin file, and a CC-ST-AE trained on it."""
    from stemae.simulate import heterostructure
    from stemae.strain import ccstae

    tmp = tmp_path_factory.mktemp("merlin")
    sim = heterostructure((12, 12), (64, 64), dose=1e5, seed=2)
    mib, hdr = write_mib(tmp / "scan.mib", sim.data.reshape(-1, 64, 64), (12, 12))
    model, _ = ccstae.fit(sim.data, n_classes=2, epochs=1, n_train=144, seed=0)
    ccstae.save(model, tmp / "model")
    return tmp, mib, hdr


def test_live_results_equal_the_offline_run(scan, tmp_path):
    import zarr

    tmp, mib, hdr = scan
    sim = MerlinSim(hdr)
    try:
        run = sim.live("--model", str(tmp / "model"), "--scan", "12x12", "--out", str(tmp_path / "live"),
                       "--reference-phase", "0", "--block-rows", "3")
        out, err = _finish(run)
    finally:
        sim.stop()
    assert run.returncode == 0, err[-2000:]
    assert "144 patterns" in out
    off = subprocess.run([str(BIN / "stemae"), "predict", str(mib), "--scan-shape", "12x12", "--model",
                          str(tmp / "model"), "--out", str(tmp_path / "offline"), "--reference-phase", "0",
                          "--block-rows", "3", "--no-progress"], capture_output=True, text=True, check=False)
    assert off.returncode == 0, off.stderr[-2000:]
    live, offline = (zarr.open_group(str(tmp_path / d / "strain.zarr"), mode="r") for d in ("live", "offline"))
    names = sorted(k for k in offline.array_keys())
    assert sorted(live.array_keys()) == names and "e_xx" in names
    for k in names:
        np.testing.assert_array_equal(np.asarray(live[k]), np.asarray(offline[k]), err_msg=k)
    figures = sorted(p.name for p in (tmp_path / "offline").glob("*.png"))
    assert figures and sorted(p.name for p in (tmp_path / "live").glob("*.png")) == figures
    assert not (tmp_path / "live" / ".strain.partial.zarr").exists()


def _finish(run, timeout: float = 300):
    """A live run's output; the process is killed if it outlives ``timeout``."""
    try:
        return run.communicate(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)


def test_live_from_a_dectris_stream_equals_the_offline_run(scan, tmp_path):
    """The same scan recorded as a DECTRIS SIMPLON stream and replayed by
    LiberTEM-live's DECTRIS simulator (armed through its REST API, frames
    LZ4-compressed on ZeroMQ) maps to what `stemae predict` gives on the
    same frames saved as .npy (DECTRIS frames are not flipped)."""
    import zarr
    from dectris_writer import write_stream

    from stemae.simulate import heterostructure

    tmp = scan[0]
    data = np.clip(np.rint(heterostructure((12, 12), (64, 64), dose=1e5, seed=2).data), 0, 65535)
    np.save(tmp_path / "scan.npy", data.astype(np.uint16))
    sim = DectrisSim(write_stream(tmp_path / "scan.dectris", data.reshape(-1, 64, 64)))
    try:
        run = sim.live("--model", str(tmp / "model"), "--scan", "12x12", "--out", str(tmp_path / "live"),
                       "--reference-phase", "0", "--block-rows", "3", "--timeout-s", "60")
        out, err = _finish(run)
    finally:
        sim.stop()
    assert run.returncode == 0, err[-2000:]
    off = subprocess.run([str(BIN / "stemae"), "predict", str(tmp_path / "scan.npy"), "--model", str(tmp / "model"),
                          "--out", str(tmp_path / "offline"), "--reference-phase", "0", "--block-rows", "3",
                          "--no-progress"], capture_output=True, text=True, check=False)
    assert off.returncode == 0, off.stderr[-2000:]
    live, offline = (zarr.open_group(str(tmp_path / d / "strain.zarr"), mode="r") for d in ("live", "offline"))
    for k in ("e_xx", "e_yy", "e_xy", "theta", "phase", "g1", "g2", "valid"):
        np.testing.assert_array_equal(np.asarray(live[k]), np.asarray(offline[k]), err_msg=k)


def test_a_detector_that_stops_early_keeps_the_frames_and_says_how_to_finish(scan, tmp_path):
    tmp, mib, hdr = scan
    sim = MerlinSim(hdr)
    try:  # the file holds 144 frames; a 13x12 scan waits for 156
        run = sim.live("--model", str(tmp / "model"), "--scan", "13x12", "--out", str(tmp_path / "live"),
                       "--reference-phase", "0", "--block-rows", "3", "--timeout-s", "20")
        out, err = _finish(run)
    finally:
        sim.stop()
    assert run.returncode == 2
    assert "stemae predict" in err and "frames.zarr" in err, err[-2000:]
    assert (tmp_path / "live" / "frames.zarr").is_dir()
    assert not (tmp_path / "live" / "strain.zarr").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_live_page_fills_in_while_frames_arrive(tmp_path):
    """Headless Chromium on the live page while a 24x24 scan of 128x128
    patterns arrives at 40 frames per second: the count of mapped positions
    shown rises, and the strain map's pixels change between screenshots."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from stemae.simulate import heterostructure
    from stemae.strain import classical

    sim_data = heterostructure((24, 24), (128, 128), dose=1e5, seed=5).data
    mib, hdr = write_mib(tmp_path / "scan.mib", sim_data.reshape(-1, 128, 128), (24, 24))
    classical.save_state(classical.fit_state(sim_data[:, :6], method="xcorr"), tmp_path / "model", (128, 128))
    sim = MerlinSim(hdr, dwell_us=25000)
    port = free_port()
    run = sim.live("--model", str(tmp_path / "model"), "--scan", "24x24", "--out", str(tmp_path / "live"),
                   "--block-rows", "1", "--view", str(port), "--reference", "0:24,0:6")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = None
    try:
        for _ in range(300):  # the page is up once the frames store exists
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        seen, shots = [], []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            mapped = int(driver.find_element(By.ID, "mapped").text)
            if not seen or mapped != seen[-1]:
                seen.append(mapped)
                shots.append(driver.find_element(By.ID, "e_xx").screenshot_as_png)
            if mapped == 24 * 24 or driver.find_element(By.ID, "state").text in ("finished", "failed"):
                break
            time.sleep(0.2)
        total = driver.find_element(By.ID, "total").text
        pattern = driver.find_element(By.ID, "where").text
    finally:
        if driver is not None:
            driver.quit()
        out, err = _finish(run)
        sim.stop()
    assert run.returncode == 0, err[-2000:]
    assert total == "576" and pattern.startswith("(")
    assert len(seen) >= 3 and seen == sorted(seen) and seen[0] < seen[-1], seen  # it filled in, in steps
    assert 0 < seen[1] < 576
    assert shots[1] != shots[-1]  # the map changed on screen


def test_a_stalled_detector_ends_the_wait(tmp_path):
    """Rows whose frames never come raise DetectorGone once no frame has
    arrived for the stall time; rows already in are read at once."""
    from stemae.live import DetectorGone, LiveCube, open_frames

    cube = LiveCube(open_frames(tmp_path, (3, 4), (8, 8)), (3, 4), stall=0.5)
    frames = np.arange(4 * 64, dtype=np.float32).reshape(4, 8, 8)
    cube.record(0, frames)
    np.testing.assert_array_equal(cube[0:1][0], frames)
    with pytest.raises(DetectorGone, match="no frame came for 0.5 s after 4 of 12"):
        cube[1:2]
