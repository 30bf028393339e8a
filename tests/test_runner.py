"""The one runner: the same per-batch step in process, on a Dask cluster of
real worker processes with memory limits, and resumed after a real kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stemae.data import read_datacube, read_results, write_datacube
from stemae.errors import InputError
from stemae.runner import partial_status, run
from stemae.simulate import heterostructure
from stemae.strain import classical, map_strain

distributed = pytest.importorskip("distributed")


def _same(a: dict, b: dict) -> None:
    """Equal maps; floats to float32 rounding (a worker's one thread sums
    in another order than this process's two)."""
    for k, v in a.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            np.testing.assert_allclose(b[k], v, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(v)), err_msg=k)
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(b[k], v, err_msg=k)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_a_cluster_maps_data_larger_than_its_workers_memory(tmp_path):
    """A zarr datacube four times a worker's memory limit, mapped by two
    worker processes that each read their own blocks: same numbers as in
    process, and no worker was restarted for memory."""
    sim = heterostructure((8, 64), (128, 128), dose=1e5, seed=5)
    limit = 320 * 2**20
    tiles = 40  # 320 x 64 patterns of 128 x 128 float32: 1.34 GB
    path = tmp_path / "big.zarr"
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=(8 * tiles, 64, 128, 128), chunks=(2, 64, 128, 128),
                        dtype="f4", zarr_format=2)
    for t in range(tiles):
        z[8 * t : 8 * (t + 1)] = sim.data
    assert z.nbytes >= 4 * limit
    cube = read_datacube(path)
    ref = np.zeros(cube.scan_shape, bool)
    ref[:, :8] = True
    state = classical.fit_state(cube.data, method="xcorr", reference=ref)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=limit, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        on_cluster = map_strain(z, reference=ref, state=state, client=client, rows=1)
        # No worker passed 95 % of its limit (its nanny would have killed and
        # restarted it), and none holds more than its limit now.
        assert client.run(os.getpid) == pids
        assert max(client.run(_rss).values()) < limit
    in_process = map_strain(sim.data, reference=ref[:8], state=state)
    for k in ("e_xx", "e_yy", "e_xy", "theta", "valid"):
        for t in range(tiles):
            np.testing.assert_array_equal(on_cluster[k][8 * t : 8 * (t + 1)], in_process[k], err_msg=k)


def test_ccstae_and_domains_on_a_cluster_equal_in_process(tmp_path):
    from stemae.domains.run import map_domains
    from stemae.simulate.domains import simulate_domain_images
    from stemae.strain import ccstae

    sim = heterostructure((12, 12), (64, 64), dose=1e5, seed=2)
    model, _ = ccstae.fit(sim.data, n_classes=2, epochs=1, n_train=144, seed=0)
    images = simulate_domain_images(2, shape=(256, 256), n_regions=3, seed=1).images
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        there = ccstae.predict(model, sim.data, client=client, rows=3)
        maps_there, _, _ = map_domains(images, epochs=2, seed=0, client=client)
    here = ccstae.predict(model, sim.data, rows=3)
    _same(here, there)
    maps_here, _, _ = map_domains(images, epochs=2, seed=0)
    _same(maps_here, maps_there)


def test_a_killed_run_resumes_to_the_same_results(tmp_path):
    """A real `stemae strain` process killed with SIGKILL midway, started
    again: it continues from the blocks it wrote and ends with exactly the
    results of an uninterrupted run; the incomplete store is never read as
    a result."""
    sim = heterostructure((40, 40), (96, 96), dose=1e5, seed=4)
    data = tmp_path / "scan.h5"
    write_datacube(data, sim.data)
    cmd = [str(Path(sys.executable).parent / "stemae"), "strain", str(data), "--method", "xcorr", "--reference", "0:40,0:6",
           "--block-rows", "1", "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cmd + ["--out", str(whole)], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = killed / ".strain.partial.zarr"
    deadline = time.monotonic() + 300
    while (partial_status(partial) or (0, 1))[0] < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done, blocks = partial_status(partial)
    assert 0 < done < blocks == 40
    assert not (killed / "strain.zarr").exists()
    with pytest.raises(InputError, match="incomplete run.*run the same command again"):
        read_results(partial)
    r = subprocess.run([cmd[0], "show", str(data), "--results", str(killed), "--at", "0,0"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "holds an interrupted run" in r.stderr and "run the same command again" in r.stderr
    r = subprocess.run(cmd + ["--out", str(killed)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert partial_status(partial) is None and not partial.exists()
    a, attrs_a = read_results(whole / "strain.zarr")
    b, attrs_b = read_results(killed / "strain.zarr")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert attrs_a["bundle"]["weights_sha256"] == attrs_b["bundle"]["weights_sha256"]


def test_a_store_of_another_run_is_started_afresh(tmp_path):
    """Resuming needs the same input and state: a partial store left by
    another run is replaced, and a folder that is no partial store refused."""
    sim = heterostructure((6, 6), (64, 64), dose=1e5, seed=1)
    ref = ((0, 6), (0, 2))
    state = classical.fit_state(sim.data, reference=ref)
    step = classical.ClassicalStep(state, (64, 64))
    store = tmp_path / "p.zarr"
    first = run(step, sim.data, store=store, fingerprint={"input": "a"}, rows=2)
    assert partial_status(store) == (3, 3)
    other = run(step, sim.data[::-1], store=store, fingerprint={"input": "b"}, rows=2)
    np.testing.assert_array_equal(other["G"], first["G"][::-1])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a stemae partial store"):
        run(step, sim.data, store=tmp_path / "x", fingerprint={}, rows=2)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"
