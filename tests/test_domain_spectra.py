"""Stripe order against noise, fundamental periods of sharp and sinusoidal
stripes, window sizing from the images, the independent image generator and
a series whose stripes fade to nothing."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from stemae.domains.lockin import banked_lock_in, lock_in, relative_contrast
from stemae.domains.run import map_domains, refine_walls
from stemae.domains.windows import (choose_window, hann, order_null, pooled_order, spectra_of_windows,
                                    spectral_order, stripe_peaks, window_centres, window_ffts, window_stripes)
from stemae.simulate.domains import simulate_domain_series
from stemae.simulate.patchwork import patchwork_images


def _stripes(shape, angle_deg, period, sharpness, contrast=0.1, dose=200.0, seed=0):
    """Poisson image of stripes with walls at ``angle_deg``: sinusoidal for a
    small ``sharpness``, square waves for a large one."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    t = np.deg2rad(angle_deg)
    c = np.cos(2 * np.pi * (-xx * np.sin(t) + yy * np.cos(t)) / period)
    profile = np.tanh(sharpness * c) / np.tanh(sharpness)
    return np.random.default_rng(seed).poisson(dose * (1 + contrast * profile)).astype(np.float32)


def test_noise_alone_rarely_passes_for_order_whatever_its_colour():
    """White noise and a correlated isotropic mottle (several times the
    shot noise at low frequencies) pass the order threshold at about the
    null's 0.1 % rate: the whitening makes the statistic independent of the
    noise's colour."""
    window, crop = 64, 33
    typical, threshold = order_null(window, crop)
    gen = torch.Generator().manual_seed(123)  # not the null's seed
    white = torch.randn(4096, window, window, generator=gen)
    k = torch.fft.fftfreq(window)
    gain = torch.exp(-2 * (np.pi * 3.0) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    mottle = torch.fft.ifft2(torch.fft.fft2(torch.randn(4096, window, window, generator=gen)) * gain).real
    mottle = white + 6 * mottle / mottle.std()
    for noise in (white, mottle):
        order = spectral_order(spectra_of_windows(noise, hann(window), crop))[0]
        assert (order > threshold).float().mean().item() < 0.005
        assert order.median().item() == pytest.approx(typical, rel=0.1)


def test_faint_stripes_are_found_by_pooling_neighbouring_windows():
    """Stripes of 3.5 % contrast at 200 counts per pixel pass the order test
    in about two windows of three on their own; pooled over neighbouring
    windows in more than 9 of 10, with their wall angle and period still
    right. On noise alone pooling adds about as few false alarms as the
    single-window test allows (its null's 0.1 %)."""
    window, stride = 48, 12
    img = _stripes((384, 384), 30.0, 12.0, 0.3, contrast=0.035, seed=5)
    spectra, _ = window_ffts(img, window, stride, 33)
    stripes = window_stripes(spectra, window)
    order = pooled_order(spectra, stripes["order"], window, stride)
    assert (stripes["order"] > 1).mean() < 0.8
    assert (order > 1).mean() > 0.9
    gained = (order > 1) & (stripes["order"] <= 1)
    assert np.median(np.abs((stripes["orientation"][gained] - 30.0 + 90) % 180 - 90)) < 2.0
    assert np.median(np.abs(stripes["period"][gained] / 12.0 - 1)) < 0.05
    noise = np.random.default_rng(7).poisson(200.0, (4, 384, 384)).astype(np.float32)
    spectra, _ = window_ffts(noise, window, stride, 33)
    order = pooled_order(spectra, window_stripes(spectra, window)["order"], window, stride)
    assert (order > 1).mean() < 0.005


@pytest.mark.parametrize("sharpness", [0.3, 8.0])
def test_fundamental_period_and_angle_of_sinusoidal_and_sharp_stripes(sharpness):
    """Periods from 6 to 40 px, in windows of four periods (at least 32 px): the fundamental,
    not a harmonic, to 2 %; the wall angle to a degree; and 2 % stripe
    contrast still stands out from the noise."""
    for period, angle in ((6.0, 30.0), (13.0, -45.0), (25.0, 0.0), (40.0, 75.0)):
        window = max(32, int(np.ceil(4 * period / 2) * 2))
        img = _stripes((window, window), angle, period, sharpness)
        r = window_stripes(window_ffts(img, window, window, min(33, window - 1))[0], window)
        assert r["period"].item() == pytest.approx(period, rel=0.02), (period, r["period"])
        assert abs((r["orientation"].item() - angle + 90) % 180 - 90) < 1.0
        assert r["order"].item() > 5
    faint = _stripes((64, 64), 0.0, 16.0, sharpness, contrast=0.02)
    assert window_stripes(window_ffts(faint, 64, 64, 33)[0], 64)["order"].item() > 1


def _two_regions(contrast: float = 0.1, seed: int = 1):
    """512x512 Poisson image (200 counts): square-wave stripes of 30 px on
    the right half, sinusoidal stripes of 12 px on the left."""
    yy, xx = np.mgrid[0:512, 0:512]
    img = np.random.default_rng(seed).poisson(200 * (1 + contrast * np.sign(np.cos(2 * np.pi * xx / 30.0))))
    left = 200 * (1 + contrast * np.cos(2 * np.pi * yy[:, :256] / 12.0))
    img[:, :256] = np.random.default_rng(seed + 1).poisson(left)
    return img.astype(np.float32)


def test_window_holds_four_of_the_median_period():
    window, crop, periods = choose_window(_two_regions())
    # The square wave's harmonics (10 px, 6 px) are not periods of their own;
    # the sizing reads periods to the tile's frequency pixel (a few per cent).
    np.testing.assert_allclose(np.sort(periods), [12, 30], rtol=0.06)
    assert window == pytest.approx(4 * 21, rel=0.06) and window % 2 == 0 and crop == 33
    noise = np.random.default_rng(3).poisson(200, (4, 512, 512)).astype(np.float32)
    assert len(stripe_peaks(noise)[0]) == 0 and all(len(stripe_peaks(f)[0]) == 0 for f in noise)
    assert choose_window(noise[0, :256, :256])[:2] == (48, 33)  # nothing to size from: the default


def test_window_grows_for_faint_stripes_in_any_frame():
    """Faint stripes (contrast 0.004, a fifth of the shot noise per period)
    need a bigger window to stand out than four of the median period, up to
    four of the longest; in a series the faintest frame decides, though the
    frames' average shows its stripes strongly."""
    strong = choose_window(_two_regions())[0]
    faint, _, periods = choose_window(_two_regions(contrast=0.004))
    assert strong + 8 < faint <= 4 * periods.max() + 2
    series = np.stack([_two_regions(seed=s) for s in (11, 13, 15)] + [_two_regions(contrast=0.004, seed=17)])
    assert choose_window(series[:3])[0] == pytest.approx(strong, abs=8)
    assert choose_window(series)[0] > strong + 8


def test_lock_in_reads_the_share_of_a_region_across_its_wall():
    """Stripes (period 20 px, walls at 30 degrees, contrast 0.1) fill the
    left half of a Poisson image under an illumination gradient, the right
    half is domain-free: the lock-in at the stripes' wave reads half their
    contrast inside, half of that on the wall, near nothing a period beyond
    it, and near nothing for the wave at 90 degrees to it."""
    period, angle, contrast = 20.0, 30.0, 0.1
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    t = np.deg2rad(angle)
    wave = np.array([-np.sin(t), np.cos(t)]) / period
    stripes = np.where(xx < 128, contrast * np.cos(2 * np.pi * (wave[0] * xx + wave[1] * yy)), 0.0)
    image = np.random.default_rng(3).poisson(200 * (1 + stripes) * (1 + 0.3 * xx / 256)).astype(np.float32)
    points = np.array([[128, 64], [128, 128], [128, 128 + 2 * period], [128, 40]])
    waves = np.array([wave, wave, wave, [wave[1], -wave[0]]])
    amp = lock_in(relative_contrast(image, period), points, waves, np.full(4, 0.5 * period))
    np.testing.assert_allclose(amp[0], contrast / 2, rtol=0.1)
    np.testing.assert_allclose(amp[1] / amp[0], 0.5, atol=0.08)
    assert amp[2] < 0.1 * amp[0] and amp[3] < 0.1 * amp[0]


def test_banked_lock_in_follows_stripes_that_bend():
    """Where a region's stripes have turned by 15 degrees and stretched by
    15 % from the wave its window measured (bending, uneven walls), the
    lock-in at that wave loses about a third of their amplitude; the bank
    of turned and stretched waves reads their full amplitude (half the
    contrast), and still next to nothing at 90 degrees."""
    period, angle, contrast = 20.0, 30.0, 0.1
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    t = np.deg2rad(angle + 15.0)
    wave = np.array([-np.sin(t), np.cos(t)]) / (1.15 * period)
    stripes = contrast * np.cos(2 * np.pi * (wave[0] * xx + wave[1] * yy))
    contrast_map = relative_contrast(np.random.default_rng(4).poisson(200 * (1 + stripes)).astype(np.float32), period)
    point = np.array([[128, 128]])
    t0 = np.deg2rad(angle)
    plain = lock_in(contrast_map, point, np.array([[-np.sin(t0), np.cos(t0)]]) / period, np.array([0.5 * period]))
    banked = banked_lock_in(contrast_map, point, np.array([angle]), np.array([period]))
    across = banked_lock_in(contrast_map, point, np.array([angle + 90.0]), np.array([period]))
    assert plain[0] < 0.75 * contrast / 2
    np.testing.assert_allclose(banked[0], contrast / 2, rtol=0.1)
    assert across[0] < 0.1 * banked[0]


def test_domain_free_blob_about_a_window_wide_is_found_inside_stripes():
    """A domain-free disc 72 px across in a field of stripes (period 16 px):
    every 96 px window over it still shows the stripes at its edges, so all
    windows come typed as stripes and none is beside a domain-free one. The
    walls step finds the windows whose own wave is weak at their centre
    against their neighbours' and makes those the disc covers domain-free;
    the rest stay stripes."""
    period, radius = 16.0, 36.0
    centres = window_centres((256, 256), 96, 24)
    middle = centres[3, 3]
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    c = np.cos(2 * np.pi * yy / period) * (np.hypot(yy - middle[0], xx - middle[1]) > radius)
    image = np.random.default_rng(5).poisson(200 * (1 + 0.15 * c)).astype(np.float32)[None]
    labels = np.ones((1,) + centres.shape[:2], int)
    grid = np.ones(labels.shape)
    out = refine_walls(image, labels, 0.0 * grid, period * grid, centres, 96)[0]
    r = np.hypot(*(centres - middle).transpose(2, 0, 1))
    assert (out[r < radius - period / 2] == 0).all() and (r < radius - period / 2).sum() == 5
    assert (out[r > radius + period / 2] == 1).all()


def test_region_smaller_than_a_window_is_read_against_its_own_amplitude():
    """A disc 80 px across of stripes at 90 degrees in a field of stripes at
    0 degrees (period 16 px), under 96 px windows: the disc's type has no
    interior window to read its share against, so each type's share is its
    wave at a window's centre over its largest amplitude nearby. The
    windows first typed as the disc's are off by one grid step; afterwards
    those whose centres the disc covers have its type and the rest the
    field's."""
    period, radius = 16.0, 40.0
    centres = window_centres((256, 256), 96, 24)
    middle = centres[3, 3]
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    disc = np.hypot(yy - middle[0], xx - middle[1]) < radius
    c = np.where(disc, np.cos(2 * np.pi * xx / period), np.cos(2 * np.pi * yy / period))
    image = np.random.default_rng(6).poisson(200 * (1 + 0.15 * c)).astype(np.float32)[None]
    r = np.hypot(*(centres - middle).transpose(2, 0, 1))
    # The windows first typed as the disc's are one grid step off to the right.
    labels = np.where(np.hypot(*(centres - middle - [0, 24]).transpose(2, 0, 1)) < 30, 2, 1)[None]
    out = refine_walls(image, labels, np.where(labels == 2, 90.0, 0.0), np.full(labels.shape, period), centres, 96)[0]
    assert (out[r < radius - period / 2] == 2).all() and (r < radius - period / 2).sum() == 5
    assert (out[r > radius + period / 2] == 1).all()


def test_independent_generator_is_mapped():
    """Images of the second generator (blob regions, uneven domain widths,
    erf walls): its truth agrees with what the windows show, and default
    settings map its types."""
    sim = patchwork_images(1, (512, 512), n_regions=6, period_range=(10, 20), wall=1.0, seed=21)
    maps, info, _ = map_domains(sim.images, epochs=4, seed=0)
    truth = sim.labels_at(maps["centres"])
    assert adjusted_rand_score(truth.ravel(), maps["segmentation"].ravel()) > 0.75
    ang, per = sim.window_truth(maps["centres"], info["window"])
    ok = np.isfinite(ang) & (maps["segmentation"] > 0)
    assert np.median(np.abs((maps["orientation"] - ang + 90) % 180 - 90)[ok]) < 2.0
    assert np.median(np.abs(maps["period"][ok] / per[ok] - 1)) < 0.05


def test_series_whose_stripes_fade_to_nothing():
    """Stripes fade region by region as each nears its transition (contrast
    as the square root of the distance to it), then vanish: the per-frame
    fractions follow the truth to 0.05, and the last frame is domain-free."""
    temps = (100, 140, 160, 200)
    sim = simulate_domain_series(temps, shape=(512, 512), n_regions=10, seed=31)
    maps, info, _ = map_domains(sim.images, epochs=4, seed=0)
    truth = sim.labels_at(maps["centres"])
    free_true = (truth == 0).reshape(len(temps), -1).mean(1)
    free_found = maps["fractions"][:, 0]
    np.testing.assert_allclose(free_found, free_true, atol=0.05)
    assert free_true[0] < 0.5 and free_true[-1] == 1.0 and free_found[-1] > 0.99
