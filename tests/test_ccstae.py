import warnings

import numpy as np
import pytest
import torch

from stemae.errors import InputError
from stemae.geometry import deformation_from_strain
from stemae.simulate import WS2, heterostructure, simulate_datacube
from stemae.strain import ccstae
from stemae.strain.evaluate import strain_errors, truth_strain_maps


@pytest.fixture(scope="module")
def uniform():
    """Left third unstrained, the rest under one known strain and rotation."""
    e = dict(e_xx=0.01, e_yy=-0.006, e_xy=0.003, theta=np.radians(0.4))
    shape = (24, 24)
    right = np.zeros(shape, bool)
    right[:, 8:] = True
    F = deformation_from_strain(*(np.where(right, v, 0.0) for v in e.values()))
    sim = simulate_datacube(F, np.zeros(shape, int), [WS2], orientation=12.0, dose=1e5, seed=5)
    return sim, e, right


@pytest.fixture(scope="module")
def fitted(uniform):
    sim = uniform[0]
    model, record = ccstae.fit(sim.data, n_classes=1, n_train=256, epochs=3, seed=1)
    return model, record


def test_recovers_uniform_strain(uniform, fitted):
    sim, e, right = uniform
    model, record = fitted
    m = ccstae.to_strain(ccstae.predict(model, sim.data), reference=((0, 24), (0, 8)))
    assert m["valid"].all()
    for k in ("e_xx", "e_yy", "e_xy"):
        assert np.abs(m[k][right] - e[k]).mean() < 2e-3
        assert abs(np.median(m[k][right]) - e[k]) < 5e-4
    assert np.abs(m["theta"][right] - np.degrees(e["theta"])).mean() < 0.05
    assert np.abs(m["origin"] - sim.truth["origin"]).max() < 0.1
    assert record["loss"][-1] < record["loss"][0]  # training lowered the cycle losses


def test_cycle_losses_are_lowest_at_the_true_transform(uniform, fitted):
    sim = uniform[0]
    model = fitted[0]
    x = torch.as_tensor(sim.data[:, 12:].reshape(-1, *sim.data.shape[2:])[:16])
    G_true = torch.as_tensor(np.stack([sim.truth["g1"][:, 12:], sim.truth["g2"][:, 12:]], -1).reshape(-1, 2, 2)[:16])
    from stemae.strain.lattice import align_to_reference

    G_true = torch.as_tensor(align_to_reference(G_true.double().numpy(), model.G[0].detach().double().numpy())).float()
    A_true = (G_true @ torch.linalg.inv(model.G[0].detach()))[:, None]
    o_true = torch.as_tensor(sim.truth["origin"][:, 12:].reshape(-1, 2)[:16])[:, None]
    with torch.no_grad():
        f0, i0 = model.cycle_losses(x, A_true, o_true)
        f1, i1 = model.cycle_losses(x, A_true * 1.01, o_true)
        f2, i2 = model.cycle_losses(x, A_true, o_true + 0.5)
    assert (f1 > f0).all() and (i1 > i0).all()
    assert (f2 > f0).all() and (i2 > i0).all()


def test_bundle_round_trip(tmp_path, uniform, fitted):
    sim = uniform[0]
    model, record = fitted
    path = ccstae.save(model, tmp_path / "bundle", record)
    back = ccstae.load(path)
    a = ccstae.predict(model, sim.data[:4])
    b = ccstae.predict(back, sim.data[:4])
    np.testing.assert_allclose(a["G"], b["G"], atol=1e-5)
    (path / "weights.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(InputError):
        ccstae.load(path)


def test_deterministic_with_a_seed(uniform):
    sim = uniform[0]
    m1, _ = ccstae.fit(sim.data, n_train=64, n_init=64, epochs=1, seed=7)
    m2, _ = ccstae.fit(sim.data, n_train=64, n_init=64, epochs=1, seed=7)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=0, atol=0, msg=k)


def test_phase_map_of_heterostructure():
    sim = heterostructure((24, 24), (128, 128), dose=1e4, seed=8)
    model, _ = ccstae.fit(sim.data, n_classes=2, n_train=256, epochs=3, seed=0)
    m = ccstae.to_strain(ccstae.predict(model, sim.data), reference=((0, 24), (0, 4)))
    truth = sim.truth["phase"]
    # Class 0 is the base with the larger reciprocal cell: WS2, the truth's phase 0.
    assert (m["phase"] == truth).mean() > 0.98
    assert m["probabilities"].shape == (24, 24, 2)
    np.testing.assert_allclose(m["probabilities"].sum(-1), 1, atol=1e-5)
    err = strain_errors(m, truth_strain_maps(sim.truth, ((0, 24), (0, 4)), m["g_ref"]), m["valid"])
    assert err["e_xx"] < 3e-3 and err["theta"] < 0.15


def test_polycrystal_in_any_orientation():
    from stemae.simulate import polycrystal

    sim = polycrystal((20, 20), (128, 128), dose=1e5, n_grains=4, seed=2)
    ref = sim.truth["grain"] == sim.truth["grain"][10, 10]
    model, _ = ccstae.fit(sim.data, n_classes=1, n_train=256, epochs=3, seed=0)
    m = ccstae.to_strain(ccstae.predict(model, sim.data), reference=ref)
    G = np.stack([m["g1"], m["g2"]], -1)
    err = strain_errors(m, truth_strain_maps(sim.truth, ref, m["g_ref"], like=G), m["valid"])
    assert m["valid"].mean() > 0.95
    assert err["e_xx"] < 1e-3 and err["e_yy"] < 1e-3 and err["theta"] < 0.05


def test_a_blank_pattern_is_an_invalid_position_not_an_error(fitted, uniform):
    """A pattern with no counts (a blanked beam, a dropped frame) carries no
    information: its covariance is NaN and its strain invalid, while the
    per-batch step maps the other patterns of its batch as without it (the
    whole-map pooling of centroid offsets then pools one position fewer)."""
    data = np.array(uniform[0].data[:4, :4])
    step = ccstae.PredictStep(fitted[0])
    before = step(data.reshape(16, *data.shape[2:]))
    data[1, 2] = 0
    after = ccstae.predict(fitted[0], data)
    assert not np.isfinite(after["cov"][1, 2]).any()
    assert not ccstae.to_strain(after, reference=((0, 4), (0, 4)))["valid"][1, 2]
    others = np.ones(16, bool)
    others[1 * 4 + 2] = False
    np.testing.assert_array_equal(step(data.reshape(16, *data.shape[2:]))["G"][others], before["G"][others])


def test_compiled_fits_map_as_the_plain_ones(uniform, fitted):
    """``compile=True`` runs the likelihood fits through torch.compile in
    sub-batches of a fixed size (the last one padded): the maps are the
    plain ones to float32 rounding."""
    sim = uniform[0]
    plain = ccstae.predict(fitted[0], sim.data, batch_size=200, compile=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = ccstae.predict(fitted[0], sim.data, batch_size=200, compile=True)  # 576 = 4 x 128 + 64 on a CPU
    assert not [w for w in caught if "is not available here" in str(w.message)]  # it did compile
    np.testing.assert_array_equal(fused["phase"], plain["phase"])
    np.testing.assert_allclose(fused["G"], plain["G"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(fused["origin"], plain["origin"], rtol=0, atol=1e-3)
    box = ((0, 24), (0, 8))
    a, b = ccstae.to_strain(fused, box), ccstae.to_strain(plain, box)
    for k in ("e_xx", "e_yy", "e_xy"):
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=2e-5)
        np.testing.assert_allclose(a[f"sigma_{k}"], b[f"sigma_{k}"], rtol=1e-3)


def test_bases_settle_where_the_fits_put_the_patterns():
    """At about ten electrons per first-order disk a fit converges only part
    of the way from its base: from bases 1 % too large the lattices come out
    biased; settling (the end of training) brings the bases back to the
    true lattice, and the lattices with them."""
    from stemae.strain.ccstae.train import settle_bases
    from stemae.strain.lattice import align_to_reference

    shape = (16, 16)
    sim = simulate_datacube(np.broadcast_to(np.eye(2), shape + (2, 2)), np.zeros(shape, int), [WS2],
                            orientation=7.0, dose=1e4, background=0.3, central_fraction=0.97, seed=3)
    model, record = ccstae.fit(sim.data, n_classes=1, n_train=128, epochs=1, seed=2)
    assert 1 <= len(record["base_moves"]) <= 4
    true_G = np.stack([sim.truth["g1"], sim.truth["g2"]], -1)[0, 0]

    def lattice_error(G):  # median relative size error of the measured lattices
        G = align_to_reference(G.reshape(-1, 2, 2).astype(np.float64), true_G)
        return np.median(np.linalg.norm(G, axis=-2) / np.linalg.norm(true_G, axis=-2) - 1, 0)

    with torch.no_grad():
        model.G.mul_(1.01)
    off = lattice_error(ccstae.predict(model, sim.data)["G"])
    assert (off > 3e-3).all()  # the fits keep part of the base's error
    moves = settle_bases(model, sim.data)
    assert moves[0] > 3e-3
    for settled in (lattice_error(model.G.detach().numpy()), lattice_error(ccstae.predict(model, sim.data)["G"])):
        assert (np.abs(settled) < 2.5e-3).all() and (np.abs(settled) < 0.6 * off).all()
