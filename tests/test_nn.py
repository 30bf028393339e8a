import json

import numpy as np
import pytest
import torch

from stemae.errors import InputError
from stemae.geometry import polar_decomposition
from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.lattice import refine_lattice, sample_bilinear
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


def test_refine_recovers_a_known_transform():
    from stemae.simulate import render_disks

    G = np.array([[20.0, 10.0], [0.0, 17.3]])
    hk = np.array([[h, k] for h in range(-3, 4) for k in range(-3, 4) if (h, k) != (0, 0)])
    g = hk @ G.T
    A_true = np.array([[1.012, 0.004], [-0.006, 0.995]])
    o_true = np.array([60.3, 58.8])
    pos = np.concatenate([[o_true], o_true + g @ A_true.T])[None]
    amp = np.r_[5000.0, np.full(len(g), 800.0)][None]
    img = render_disks(pos, amp, (120, 120), 4.5, 0.5)
    o, A, rms, n, chi2 = refine_lattice(torch.tensor(img, dtype=torch.float64), torch.tensor([[60.0, 59.0]], dtype=torch.float64),
                                  torch.eye(2, dtype=torch.float64)[None], torch.tensor(g, dtype=torch.float64), 4.5, 0.5,
                                  iterations=6)
    np.testing.assert_allclose(A[0].numpy(), A_true, atol=2e-4)
    np.testing.assert_allclose(o[0].numpy(), o_true, atol=0.02)
    assert int(n[0]) >= 20


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
