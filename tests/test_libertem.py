"""stemae inside LiberTEM: StrainUDF on a raw file LiberTEM reads, with the
inline executor and with LiberTEM's Dask executor, against the runner."""

import numpy as np
import pytest

from stemae.runner import run
from stemae.simulate import heterostructure
from stemae.strain import ccstae, classical
from stemae.strain.run import load_step

lt_api = pytest.importorskip("libertem.api")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("lt")
    sim = heterostructure((12, 12), (64, 64), dose=1e5, seed=6)
    raw = d / "scan.raw"
    sim.data.astype(np.float32).tofile(raw)
    state = classical.fit_state(sim.data, reference=((0, 12), (0, 3)))
    classical.save_state(state, d / "xcorr", (64, 64))
    model, _ = ccstae.fit(sim.data, n_classes=1, epochs=1, n_train=144, seed=0)
    ccstae.save(model, d / "ccstae")
    return sim, raw, d


@pytest.mark.parametrize("executor", ["inline", "dask"])
def test_strain_udf_equals_the_runner(scan, executor):
    from stemae.libertem import StrainUDF, results

    sim, raw, d = scan
    kw = {"cpus": 2} if executor == "dask" else {}
    with lt_api.Context.make_with(executor, **kw) as ctx:
        ds = ctx.load("raw", path=str(raw), nav_shape=(12, 12), sig_shape=(64, 64), dtype="float32")
        got = {name: results(ctx.run_udf(dataset=ds, udf=StrainUDF(d / name))) for name in ("xcorr", "ccstae")}
    for name, tol in (("xcorr", 0.0), ("ccstae", 1e-5)):
        want = run(load_step(d / name), sim.data)
        assert got[name].keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[name][k], want[k], rtol=tol, atol=tol * np.abs(want[k]).max(),
                                       err_msg=f"{name} {k}")
    assert np.isfinite(got["ccstae"]["G"]).all() and got["xcorr"]["valid"].mean() > 0.9
