import json

import numpy as np
import pytest
import torch

from stemae.errors import InputError
from stemae.geometry import polar_decomposition
from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.sampling import erfc_table, sample_bilinear, table_lookup, window_offsets
from stemae.strain.ccstae.likelihood import fit_disk_lattice
from stemae.nn.transforms import affine_matrix, apply_affine, invert_affine


def test_affine_parameters_are_the_polar_form():
    p = torch.tensor([[0.02, -0.01, 0.005, 0.3, 1.5, -2.0]], dtype=torch.float64)
    M = affine_matrix(p)[0]
    R, U = polar_decomposition(M[:, :2].numpy())
    assert np.degrees(np.arctan2(R[1, 0], R[0, 0])) == pytest.approx(np.degrees(0.3))
    np.testing.assert_allclose(U, [[np.exp(0.02), 0.005], [0.005, np.exp(-0.01)]], atol=1e-12)
    np.testing.assert_allclose(M[:, 2].numpy(), [1.5, -2.0])


def test_inverse_round_trip():
    p = torch.randn(5, 6, dtype=torch.float64) * torch.tensor([0.05, 0.05, 0.05, 1.0, 3.0, 3.0], dtype=torch.float64)
    M = affine_matrix(p)
    pts = torch.randn(5, 7, 2, dtype=torch.float64)
    back = apply_affine(invert_affine(M), apply_affine(M, pts))
    torch.testing.assert_close(back, pts)


def test_sample_bilinear_matches_linear_ramp():
    yy, xx = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    img = (3 * xx + 2 * yy).unsqueeze(0)
    pts = torch.tensor([[[1.25, 2.5], [7.75, 0.1]]])
    torch.testing.assert_close(sample_bilinear(img, pts), torch.tensor([[3 * 1.25 + 2 * 2.5, 3 * 7.75 + 0.2]]))


def _lattice_image(A, o, amp_central=5000.0, amp=800.0, background=0.0, shape=(120, 120)):
    from stemae.simulate import render_disks

    G = np.array([[20.0, 10.0], [0.0, 17.3]])
    hk = np.array([[h, k] for h in range(-3, 4) for k in range(-3, 4) if (h, k) != (0, 0)])
    g = hk @ G.T
    pos = np.concatenate([[o], o + g @ A.T])[None]
    amps = np.r_[amp_central, np.full(len(g), amp)][None]
    return render_disks(pos, amps, shape, 4.5, 0.5)[0] + background, g


def test_table_lookup_interpolates_values_and_slopes():
    table = torch.tensor([0.0, 1.0, 4.0, 9.0])
    v, s = table_lookup(table, 0.5, torch.tensor([0.25, 0.75, 5.0]))
    torch.testing.assert_close(v, torch.tensor([0.5, 2.5, 9.0]))
    torch.testing.assert_close(s, torch.tensor([2.0, 6.0, 10.0]))
    two = torch.stack([table, 2 * table])
    v, _ = table_lookup(two, 0.5, torch.tensor([[0.25, 0.25]]), torch.tensor([[0, 1]]))
    torch.testing.assert_close(v, torch.tensor([[0.5, 1.0]]))


def test_window_offsets_pad_with_pixels_outside_the_annulus():
    outer, inner = 6.15, 2.9
    plain = window_offsets(outer, inner)
    padded = window_offsets(outer, inner, multiple=8)
    assert len(padded) % 8 == 0 and 0 < len(padded) - len(plain) < 8
    assert torch.equal(padded[: len(plain)], plain)
    assert len({tuple(v) for v in padded.tolist()}) == len(padded)
    # Every pixel that can lie in the annulus for a centre within half a
    # pixel of the origin is kept, and no added one can.
    centres = torch.stack(torch.meshgrid(torch.linspace(-0.5, 0.5, 11), torch.linspace(-0.5, 0.5, 11),
                                         indexing="ij"), -1).reshape(-1, 1, 2)
    r = (padded[None].float() - centres).norm(dim=-1)  # (centres, P)
    assert (r[:, len(plain):] > outer).all()
    grid = torch.stack(torch.meshgrid(torch.arange(-9, 10), torch.arange(-9, 10), indexing="ij"), -1).reshape(-1, 2)
    rg = (grid[None].float() - centres).norm(dim=-1)
    reach = ((rg >= inner) & (rg <= outer)).any(0)
    assert {tuple(v) for v in grid[reach].tolist()} <= {tuple(v) for v in plain.tolist()}


def test_fit_recovers_a_known_transform():
    A_true = np.array([[1.012, 0.004], [-0.006, 0.995]])
    o_true = np.array([60.3, 58.8])
    img, g = _lattice_image(A_true, o_true)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    out = fit_disk_lattice(t(img)[None], t([[60.0, 59.0]]), torch.eye(2, dtype=torch.float64)[None], t(g),
                           erfc_table(4.5, 0.5).double(), 0.05, 4.5, iterations=6, regather=(1, 2, 3, 4, 5))
    np.testing.assert_allclose(out["A"][0].numpy(), A_true, atol=2e-4)
    np.testing.assert_allclose(out["origin"][0].numpy(), o_true, atol=0.02)
    assert int(out["on"][0].sum()) >= 20
    # Amplitudes are each disk's plateau (counts per pixel).
    plateau = 800.0 / erfc_table(4.5, 0.5).double().mul(2 * np.pi * torch.arange(211) * 0.05).sum().item() / 0.05
    np.testing.assert_allclose(out["amplitudes"][0, 1:][out["on"][0, 1:]].numpy(), plateau, rtol=0.02)


def test_fisher_information_matches_the_scatter_of_fits():
    """Poisson noise on one pattern, 300 times: the fits scatter as the
    inverse Fisher information says, and are unbiased."""
    A_true = np.array([[1.01, 0.003], [0.002, 0.995]])
    o_true = np.array([60.37, 58.61])
    img, g = _lattice_image(A_true, o_true, amp_central=2e4, amp=150.0, background=2.0)
    n = 300
    data = torch.tensor(np.random.default_rng(1).poisson(np.broadcast_to(img, (n,) + img.shape)), dtype=torch.float32)
    out = fit_disk_lattice(data, torch.tensor(o_true, dtype=torch.float32).expand(n, 2),
                           torch.tensor(A_true, dtype=torch.float32).expand(n, 2, 2), torch.tensor(g, dtype=torch.float32),
                           erfc_table(4.5, 0.5), 0.05, 4.5, local_background=True, iterations=4, regather=(1, 2, 3))
    A = out["A"].double().numpy().reshape(n, 4)
    sd_fisher = np.sqrt(np.diagonal(np.linalg.inv(out["information"].double().numpy()), axis1=1, axis2=2)[:, 2:].mean(0))
    ratio = A.std(0) / sd_fisher
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio
    assert np.all(np.abs(A.mean(0) - A_true.ravel()) < 3 * A.std(0) / np.sqrt(n))


def test_bundle_round_trip_and_refusals(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    p = save_bundle(tmp_path / "m", "ccstae", {"n_classes": 2}, t)
    cfg, back = load_bundle(p, "ccstae")
    assert cfg == {"n_classes": 2}
    torch.testing.assert_close(back["w"], t["w"])
    with pytest.raises(InputError, match="expected 'domains'"):
        load_bundle(p, "domains")
    raw = (p / "weights.safetensors").read_bytes()
    (p / "weights.safetensors").write_bytes(raw[:-5])
    with pytest.raises(InputError, match="checksum"):
        load_bundle(p, "ccstae")
    (p / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        load_bundle(p)
    with pytest.raises(InputError, match="not a stemae model bundle"):
        load_bundle(tmp_path)
    meta = {"kind": "ccstae", "format_version": 99, "weights_sha256": "", "config": {}}
    (p / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="format 99"):
        load_bundle(p)
