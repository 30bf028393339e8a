"""Windowing autoencoder: windows, latent transformer, L1 schedule, transfer
learning, segmentation against simulated truth, rotation, series table, bad input."""

import csv
import io

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from stemae.data.images import read_images
from stemae.domains import model as ae
from stemae.domains.run import fractions_table, map_domains, parse_labels
from stemae.domains.windows import hann, window_centres, window_ffts
from stemae.errors import InputError
from stemae.simulate.domains import simulate_domain_images, simulate_domain_series


@pytest.fixture(scope="module")
def images():
    """Two 512x512 images, every domain type present, with truth."""
    return simulate_domain_images(2, shape=(512, 512), n_regions=6, seed=11)


@pytest.fixture(scope="module")
def mapped(images):
    """Default settings: the window sized from the images' periods."""
    maps, info, model = map_domains(images.images, epochs=8, seed=0)
    return maps, info, model


def _stripes(shape, angle_deg, period):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    t = np.deg2rad(angle_deg)
    return 100 + 20 * np.cos(2 * np.pi * (-xx * np.sin(t) + yy * np.cos(t)) / period)


def test_window_grid_shapes_and_centres():
    img = np.random.default_rng(0).random((3, 200, 300)).astype(np.float32)
    spectra, centres = window_ffts(img, window=64, stride=16, crop=33)
    ny, nx = (200 - 64) // 16 + 1, (300 - 64) // 16 + 1
    assert spectra.shape == (3, ny, nx, 33, 33)
    assert centres.shape == (ny, nx, 2)
    # The grid is centred: equal margins (to a pixel) on both sides.
    assert centres[0, 0, 0] - 31.5 == pytest.approx(200 - 1 - 31.5 - centres[-1, 0, 0], abs=1)
    assert centres[0, 0, 1] - 31.5 == pytest.approx(300 - 1 - 31.5 - centres[0, -1, 1], abs=1)
    assert np.diff(centres[:, 0, 0]) == pytest.approx(16)
    np.testing.assert_array_equal(window_centres((200, 300), 64, 16), centres)


def test_hann_taper():
    h = hann(64).double()
    assert h.square().sum().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(h, h.flip(0)) and torch.equal(h, h.T)
    assert h[0].abs().max().item() == 0.0 and h[:, 0].abs().max().item() == 0.0
    assert h[31:33, 31:33].min().item() == pytest.approx(h.max().item(), rel=1e-3)


def test_spectrum_peak_at_stripe_frequency():
    for angle, period in ((0.0, 8.0), (90.0, 16.0), (30.0, 10.0)):
        spectra, _ = window_ffts(_stripes((64, 64), angle, period), window=64, stride=64, crop=33)
        s = spectra[0, 0, 0].copy()
        s[16, 16] = 0
        ky, kx = np.array(np.unravel_index(np.argmax(s), s.shape)) - 16
        k = 64 / period  # cycles per window along the wave vector, normal to the walls
        wave = np.deg2rad(angle + 90)
        assert abs(abs(kx * np.cos(wave) + ky * np.sin(wave)) - k) <= 1.0
        # The analytic pose reads the same orientation and period.
        psi, k0, aniso = ae.analytic_pose(ae.prepare(torch.as_tensor(spectra[0, 0])))
        assert np.rad2deg(psi.item()) % 180 == pytest.approx((angle + 90) % 180, abs=3)
        assert k0.item() == pytest.approx(k, rel=0.15)
        assert aniso.item() > 0.6


def test_taper_removes_edge_leakage():
    """A stripe period that does not fit the window leaks across the spectrum
    without a taper; with the Hann taper the spectrum away from the peak is low."""
    img = _stripes((64, 64), 0.0, 64 / 5.5)
    spectra, _ = window_ffts(img, window=64, stride=64, crop=33)
    s = np.expm1(spectra[0, 0, 0])
    ky = np.arange(33) - 16
    far = np.abs(ky) > 10
    assert s[far].max() < 0.01 * s.max()


def _peak_canonical(model):
    """Make the decoder draw a fixed canonical spectrum: two Gaussian peaks at (+-8, 0)."""
    g = ae.frequency_grid(model.crop)
    img = sum(torch.exp(-((g - torch.tensor([sx * 8.0, 0.0])) ** 2).sum(-1) / 2) for sx in (-1, 1))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.decoder[-1].bias.copy_(img.reshape(-1))
    return img


def test_pose_really_transforms_the_decoded_pattern():
    model = ae.DomainAE(33, 4)
    canonical = _peak_canonical(model)
    z = torch.zeros(1, 4)
    eye = torch.eye(2)[None]
    np.testing.assert_allclose(model.decode(z, eye)[0].detach(), canonical, atol=1e-6)
    rot = ae.rotation_scale(torch.tensor([np.pi / 2]), torch.tensor([1.0]))
    turned = model.decode(z, rot)[0].detach()
    np.testing.assert_allclose(turned, torch.rot90(canonical, 1, (0, 1)), atol=1e-5)
    grown = model.decode(z, 1.5 * eye)[0].detach()
    ky, kx = np.unravel_index(int(torch.argmax(grown[:, 17:])), (33, 16))
    assert (ky - 16, kx + 17 - 16) == (0, 12)  # peak moved from radius 8 to 12
    # Pose maps read the wave vector from the canonical peak through the pose.
    code = {"A": rot, "residual": torch.zeros(1, 4), "anisotropy": torch.ones(1)}
    maps = ae.pose_maps(code, ae.prepare(canonical[None]), window=64)
    assert maps["orientation"][0] == pytest.approx(0.0, abs=0.5)  # wave along y: walls along x
    assert maps["period"][0] == pytest.approx(64 / 8, rel=0.05)


def test_l1_schedule():
    w = [ae.l1_weight(e, 0.01, start=3, ramp=4) for e in range(10)]
    assert w[:3] == [0, 0, 0]
    np.testing.assert_allclose(w[3:7], [0.0025, 0.005, 0.0075, 0.01])
    assert w[7:] == [0.01] * 3


def test_l1_makes_content_sparse(images):
    spectra, _ = window_ffts(images.images[:1], window=48, stride=24)
    kwargs = dict(epochs=6, l1_start=1, l1_ramp=2, seed=0, latent=8)
    plain, rec0 = ae.fit(spectra, l1=0.0, **kwargs)
    sparse, rec1 = ae.fit(spectra, l1=0.05, **kwargs)
    assert rec1["l1_weight"] == [0.0, 0.025, 0.05, 0.05, 0.05, 0.05]
    z0 = np.abs(ae.predict(plain, spectra, 48)["content"]).mean()
    z1 = np.abs(ae.predict(sparse, spectra, 48)["content"]).mean()
    assert z1 < 0.5 * z0


def test_segmentation_matches_truth(images, mapped):
    maps, info, _ = mapped
    assert info["n_clusters"] == 5
    # Four of the median period, at most four of the longest (the stripes here are not faint).
    periods = np.asarray(info["periods"])
    assert 4 * np.median(periods) <= info["window"] <= 4 * periods.max() + 2
    truth = images.labels_at(maps["centres"])
    assert adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel()) > 0.85
    # Domain-free windows away from region walls: found, and nothing else taken for them.
    iy, ix = np.round(maps["centres"]).astype(int).transpose(2, 0, 1)
    far = images.wall_distance()[:, iy, ix] > info["window"] / 2
    free_t, free_p = (truth == 0) & far, (maps["segmentation"] == 0) & far
    assert (free_t & free_p).sum() >= 0.9 * free_t.sum() and (free_t & free_p).sum() >= 0.9 * free_p.sum()
    # Wall angle and period of the stripe windows against what each window shows.
    ang, per = images.window_truth(maps["centres"], info["window"])
    ok = np.isfinite(ang) & (maps["segmentation"] > 0)
    err = (maps["orientation"] - ang + 90) % 180 - 90
    assert np.median(np.abs(err[ok])) < 2.0
    assert np.median(np.abs(maps["period"][ok] / per[ok] - 1)) < 0.05
    np.testing.assert_allclose(maps["fractions"].sum(1), 1.0)
    # The types do not depend on the autoencoder's training: the same for another seed.
    again, info2, _ = map_domains(images.images, epochs=2, seed=5)
    np.testing.assert_array_equal(again["segmentation"], maps["segmentation"])
    assert info2["type_angles"] == info["type_angles"]


def test_rotation_swaps_0_and_90_and_nothing_else(images, mapped):
    _, info, model = mapped
    # A window whose grid the turn maps onto itself (an even margin).
    maps, info, _ = map_domains(images.images, window=48, init=model, epochs=0)
    turned = np.rot90(images.images, 1, axes=(1, 2))
    maps_r, info_r, _ = map_domains(turned, window=48, init=model, epochs=0, n_clusters=info["n_clusters"])
    back = np.rot90(maps_r["segmentation"], -1, axes=(1, 2))
    # One label of the turned map for each original label ...
    perm = {}
    for k in range(info["n_clusters"]):
        vals, counts = np.unique(back[maps["segmentation"] == k], return_counts=True)
        perm[k] = int(vals[np.argmax(counts)])
    mapped_back = np.vectorize(perm.get)(maps["segmentation"])
    assert (mapped_back == back).mean() > 0.995
    # ... and it is the type turned by 90 degrees: 0 <-> 90 and +45 <-> -45.
    for k, k2 in perm.items():
        if k == 0:
            assert k2 == 0  # domain-free stays
            continue
        a, a2 = maps["type_orientation"][:, k], maps_r["type_orientation"][:, k2]
        both = np.isfinite(a) & np.isfinite(a2)
        assert both.any()
        np.testing.assert_allclose((a2 - a)[both] % 180, 90, atol=1.0)
        np.testing.assert_allclose(maps_r["fractions"][:, k2], maps["fractions"][:, k], atol=0.005)
    np.testing.assert_allclose(np.rot90(maps_r["period"], -1, axes=(1, 2)), maps["period"], rtol=1e-3)
    np.testing.assert_allclose(np.rot90(maps_r["content"], -1, axes=(1, 2)), maps["content"], atol=1e-3)


def test_transfer_learning_from_a_bundle(tmp_path):
    cold = simulate_domain_series((25, 50), shape=(384, 384), n_regions=6, dose=400, seed=1)
    hot = simulate_domain_series((100, 125), shape=(384, 384), n_regions=6, dose=60, seed=2)
    s_cold, _ = window_ffts(cold.images, 48, 12)
    s_hot, _ = window_ffts(hot.images, 48, 12)
    base, _ = ae.fit(s_cold, epochs=8, seed=0)
    ae.save_model(tmp_path / "vacuum", base, {"window": 48})
    loaded, cfg = ae.load_model(tmp_path / "vacuum")
    assert cfg["window"] == 48
    np.testing.assert_allclose(ae.predict(loaded, s_hot, 48)["content"], ae.predict(base, s_hot, 48)["content"],
                               atol=1e-6)
    _, tuned = ae.fit(s_hot, epochs=2, init=loaded, seed=0)
    _, scratch = ae.fit(s_hot, epochs=2, seed=0)
    assert tuned["transfer"] and not scratch["transfer"]
    # A head start: the first epoch of fine-tuning beats the first from scratch
    # by far, and the last stays ahead.
    assert tuned["loss"][0] < 0.7 * scratch["loss"][0]
    assert tuned["loss"][-1] < scratch["loss"][-1]
    # The bundle is untouched by fine-tuning.
    np.testing.assert_allclose(ae.predict(ae.load_model(tmp_path / "vacuum")[0], s_hot, 48)["content"],
                               ae.predict(base, s_hot, 48)["content"], atol=1e-6)


def test_series_table(mapped):
    maps, info, _ = mapped
    labels, kind = parse_labels("25, 200", 2)
    assert labels == [25.0, 200.0] and kind == "number"
    rows = list(csv.DictReader(io.StringIO(fractions_table(["a.tif", "b.tif"], labels, maps))))
    assert [r["name"] for r in rows] == ["a.tif", "b.tif"]
    assert [float(r["label"]) for r in rows] == labels
    for t, r in enumerate(rows):
        fr = [float(r[f"fraction_{k}"]) for k in range(info["n_clusters"])]
        np.testing.assert_allclose(fr, maps["fractions"][t], atol=1e-4)
        assert sum(fr) == pytest.approx(1.0, abs=1e-3)
        # The domain-free type has no wall angle or period: empty cells, not "nan".
        assert r["orientation_0_deg"] == "" and r["period_0_px"] == ""
        assert all(r[f"orientation_{k}_deg"] != "" for k in range(1, info["n_clusters"]) if float(r[f"fraction_{k}"]))
    with pytest.raises(InputError, match="3 labels for 2 frames"):
        parse_labels("1,2,3", 2)


def test_types_do_not_depend_on_the_seed(images, mapped):
    """Another seed trains another autoencoder, but the types come from the
    spectra: the same types with the same numbers and the same map."""
    maps, info, _ = mapped
    other, other_info, _ = map_domains(images.images, epochs=2, seed=5)
    assert other_info["type_angles"] == info["type_angles"]
    np.testing.assert_array_equal(other["segmentation"], maps["segmentation"])


def test_images_of_different_sizes_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((64, 64), np.float32))
    np.save(tmp_path / "b.npy", np.ones((64, 80), np.float32))
    with pytest.raises(InputError, match=r"one size.*a\.npy 64x64.*b\.npy 64x80"):
        read_images([tmp_path / "a.npy", tmp_path / "b.npy"])


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(InputError, match="broken.tif"):
        read_images([bad])
    with pytest.raises(InputError, match="no such file"):
        read_images([tmp_path / "missing.png"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown image type"):
        read_images([tmp_path / "notes.txt"])


def test_window_larger_than_image():
    with pytest.raises(InputError, match="window 96 px is larger than the image"):
        window_ffts(np.ones((80, 80), np.float32), window=96)


def test_image_formats_read_alike(tmp_path):
    import imageio.v3 as iio
    import tifffile
    from dm4_writer import write_dm4

    img = (np.random.default_rng(0).random((40, 56)) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([img, img[::-1]]))
    iio.imwrite(tmp_path / "frame.png", img)
    write_dm4(tmp_path / "frame.dm4", img.astype(np.float32), [1.0, 1.0], ["nm", "nm"])
    stack, names = read_images([tmp_path / "stack.tif", tmp_path / "frame.png", tmp_path / "frame.dm4"])
    assert stack.shape == (4, 40, 56) and stack.dtype == np.float32
    assert names == ["stack.tif[0]", "stack.tif[1]", "frame.png", "frame.dm4"]
    for k in (0, 2, 3):
        np.testing.assert_array_equal(stack[k], img)
    np.testing.assert_array_equal(stack[1], img[::-1])


@pytest.mark.parametrize("temperature, n_types", [(25, 3), (200, 1)])
def test_number_of_types_is_found(temperature, n_types):
    """A frame with three stripe types and no domain-free region (a/c at 0
    and 90 degrees, some a/a) and a frame with no domains at all: three
    stripe types plus the (empty) domain-free type, and the domain-free
    type alone."""
    sim = simulate_domain_series((temperature,), shape=(512, 512), n_regions=6, seed=4)
    assert len(np.unique(sim.labels)) == n_types
    maps, info, _ = map_domains(sim.images, epochs=6, seed=0)
    assert info["n_clusters"] == (n_types + 1 if n_types > 1 else 1)
    truth = sim.labels_at(maps["centres"])
    if n_types > 1:
        assert adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel()) > 0.8
    else:
        assert (maps["segmentation"] == 0).all()


def test_deterministic_for_a_seed_and_small_windows():
    img = simulate_domain_images(1, shape=(256, 256), n_regions=5, seed=8).images
    a, info, _ = map_domains(img, window=32, epochs=2, seed=3)
    b, _, _ = map_domains(img, window=32, epochs=2, seed=3)
    assert info["crop"] == 31  # the spectrum crop shrinks to fit a small window
    for k in ("segmentation", "orientation", "content", "fractions"):
        np.testing.assert_array_equal(a[k], b[k])
