"""Windowing autoencoder with a spatial transformer in its latent space.

Every window spectrum (see :mod:`stemae.domains.windows`) is described by
content latents ``z`` and a pose: an affine map ``A`` (rotation, two scales,
shear) of frequency space. The decoder draws a canonical spectrum ``C(z)``,
centrosymmetric, with its main peak on the ``+kx`` axis at radius
:data:`R_CANON`, and the pose warps it onto the input: ``D(k) = C(A^-1 k)``.
So the pose carries the domain orientation and period and the content the
domain type.

The pose is found in two steps. An analytic estimate, exactly equivariant
under rotations of the image, takes the orientation from the doubled-angle
mean of the spectrum's excess over its median and the scale from the
radius of its peak; the spectrum is resampled into that frame, and a small
CNN on the resampled spectrum gives the content and a bounded residual
affine map. Because the CNN only ever sees the canonical frame, content and
residual are invariant when the image turns, and the orientation turns with
it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from stemae.domains.windows import R_MIN, annulus, frequency_grid
from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.sampling import sample_bilinear
from stemae.nn.transforms import affine_matrix

KIND = "domains"
#: Radius in frequency pixels of the canonical spectrum's main peak.
R_CANON = 8.0
#: Bounds of the residual pose: log scales, shear, rotation (radians).
RESIDUAL_LIMITS = (0.2, 0.2, 0.1, 0.2)


def prepare(spectra: torch.Tensor) -> torch.Tensor:
    """Spectra ``(B, k, k)`` relative to their median over the annulus, zero outside it."""
    mask = annulus(spectra.shape[-1], spectra.device)
    med = spectra[:, mask].median(1).values
    return (spectra - med[:, None, None]) * mask


def analytic_pose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orientation, peak radius and anisotropy of prepared spectra ``(B, k, k)``.

    Weights are the squared excess of each spectrum over its median. The
    orientation is the angle of the weighted two-fold (doubled-angle) mean,
    the peak radius a mean weighted by the fourth power (so the main peak,
    not its harmonics, counts).

    Returns
    -------
    psi : (B,) direction of the dominant wave vector, radians in (-pi/2, pi/2]
    k0 : (B,) radius of the spectral peak, cycles per window
    anisotropy : (B,) in [0, 1], the larger of the two-fold and four-fold
        order parameters: 0 for an isotropic spectrum, near 1 for one set of
        stripes; a window across a wall between perpendicular stripe sets has
        four-fold order although its two-fold means cancel
    """
    g = frequency_grid(x.shape[-1], x.device)
    theta = torch.atan2(g[..., 1], g[..., 0])
    r = g.norm(dim=-1)
    w2 = x.clamp_min(0) ** 2
    sw = w2.sum((1, 2)).clamp_min(1e-12)
    c2, s2 = (w2 * torch.cos(2 * theta)).sum((1, 2)), (w2 * torch.sin(2 * theta)).sum((1, 2))
    c4, s4 = (w2 * torch.cos(4 * theta)).sum((1, 2)), (w2 * torch.sin(4 * theta)).sum((1, 2))
    psi = 0.5 * torch.atan2(s2, c2)
    w4 = w2 * w2
    k0 = (w4 * r).sum((1, 2)) / w4.sum((1, 2)).clamp_min(1e-12)
    k0 = k0.clamp(R_MIN + 0.5, x.shape[-1] // 2)
    return psi, k0, torch.maximum(torch.hypot(c2, s2), torch.hypot(c4, s4)) / sw


def rotation_scale(psi: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Matrices ``(B, 2, 2)``: rotation by ``psi`` times an isotropic ``scale``."""
    c, s = torch.cos(psi) * scale, torch.sin(psi) * scale
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def warp(images: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``out(k) = images(A k)`` for spectra ``(B, k, k)`` and maps ``A`` ``(B, 2, 2)``
    about the centre; zero outside."""
    crop = images.shape[-1]
    g = frequency_grid(crop, images.device)
    xy = torch.einsum("bij,yxj->byxi", A, g) + crop // 2
    return sample_bilinear(images, xy)


class DomainAE(nn.Module):
    """The windowing autoencoder.

    Parameters
    ----------
    crop : side of the input spectra (odd)
    latent : number of content latents
    """

    def __init__(self, crop: int = 33, latent: int = 8):
        super().__init__()
        self.crop, self.latent = crop, latent
        n = crop
        for _ in range(3):
            n = (n + 1) // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.GELU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.GELU(),
            nn.Flatten(), nn.Linear(32 * n * n, 64), nn.GELU(),
            nn.Linear(64, latent + 4),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 128), nn.GELU(), nn.Linear(128, 256), nn.GELU(), nn.Linear(256, crop * crop),
        )
        # In the canonical frame the excluded low frequencies (R_MIN) become a
        # hole whose size follows the scale; masking a fixed, larger disc keeps
        # the period out of the content.
        self.register_buffer("canon_mask", (frequency_grid(crop).norm(dim=-1) >= R_CANON * 0.6).float())
        self.register_buffer("limits", torch.tensor(RESIDUAL_LIMITS))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content and pose of prepared spectra ``x`` ``(B, k, k)``.

        Returns a dict: ``content`` (B, latent); ``residual`` (B, 4) log_sx,
        log_sy, shear, rotation of the learned correction; ``A`` (B, 2, 2)
        the total map from canonical to input frequencies; ``anisotropy``
        (B,) of the analytic estimate.
        """
        with torch.no_grad():
            psi, k0, aniso = analytic_pose(x)
            A0 = rotation_scale(psi, k0 / R_CANON)
            xc = warp(x, A0) * self.canon_mask
        h = self.encoder(xc.unsqueeze(1))
        res = torch.tanh(h[:, self.latent:]) * self.limits
        zeros = torch.zeros_like(res[:, :2])
        A = A0 @ affine_matrix(torch.cat([res, zeros], 1))[..., :2]
        return {"content": h[:, :self.latent], "residual": res, "A": A, "anisotropy": aniso}

    def canonical(self, content: torch.Tensor) -> torch.Tensor:
        """Canonical spectra ``(B, k, k)`` drawn from content ``(B, latent)``; centrosymmetric."""
        c = self.decoder(content).reshape(-1, self.crop, self.crop)
        return 0.5 * (c + c.flip(-1, -2))

    @staticmethod
    def place(canonical: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Canonical spectra ``(B, k, k)`` warped by poses ``A`` into the input frame."""
        return warp(canonical, torch.linalg.inv(A))

    def decode(self, content: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Spectra ``(B, k, k)`` in the input frame drawn from content and pose."""
        return self.place(self.canonical(content), A)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        code = self.encode(x)
        return self.decode(code["content"], code["A"]), code


def pose_maps(code: dict[str, torch.Tensor], canonical: torch.Tensor, window: int) -> dict[str, np.ndarray]:
    """Physical reading of a pose.

    The main wave vector of a window is its canonical spectrum's peak mapped
    by the pose, ``A p``, which fixes the trade-off between a rotated (or
    rescaled) canonical spectrum and the residual pose. Returns the wall
    orientation (degrees in [-90, 90), from ``+x`` towards ``+y``; walls are
    normal to the wave vector), the period (pixels), the anisotropy and the
    residual stretch and shear.
    """
    psi_c, k_c, _ = analytic_pose(canonical)
    p = torch.stack([torch.cos(psi_c), torch.sin(psi_c)], -1) * k_c[:, None]
    u = (code["A"] @ p.unsqueeze(-1)).squeeze(-1)
    psi = torch.atan2(u[:, 1], u[:, 0])
    res = code["residual"]
    return {
        "orientation": (torch.remainder(torch.rad2deg(psi), 180.0) - 90.0).cpu().numpy(),
        "period": (window / u.norm(dim=1)).cpu().numpy(),
        "anisotropy": code["anisotropy"].cpu().numpy(),
        "stretch": (res[:, 0] - res[:, 1]).cpu().numpy(),
        "shear": res[:, 2].cpu().numpy(),
    }


def l1_weight(epoch: int, target: float, start: int, ramp: int) -> float:
    """L1 weight on the content latents at ``epoch`` (0-based): zero before
    ``start``, then rising linearly to ``target`` over ``ramp`` epochs."""
    if epoch < start:
        return 0.0
    return float(target) * min(1.0, (epoch - start + 1) / max(int(ramp), 1))


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the annulus, per spectrum ``(B,)``."""
    mask = annulus(x.shape[-1], x.device)
    return ((recon - x) ** 2)[:, mask].mean(1)


def fit(
    spectra,
    *,
    latent: int = 8,
    epochs: int = 20,
    n_train: int = 20000,
    batch_size: int = 256,
    lr: float = 2e-3,
    l1: float = 1e-3,
    l1_start: int = 3,
    l1_ramp: int = 5,
    init: DomainAE | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[DomainAE, dict]:
    """Train the windowing autoencoder on window spectra.

    Parameters
    ----------
    spectra : array (..., k, k), windowed log-magnitude spectra (any leading shape)
    latent : number of content latents (ignored when ``init`` is given)
    epochs : passes over the training sample
    n_train : windows drawn (without replacement, seeded) to train on
    batch_size, lr : optimiser settings (Adam)
    l1, l1_start, l1_ramp : L1 on the content latents, see :func:`l1_weight`
    init : a trained model to start from (transfer learning); it is copied
    seed : makes the fit deterministic
    device : ``"cpu"`` or ``"cuda"``
    progress : show a progress bar

    Returns
    -------
    model : DomainAE
    record : dict with per-epoch ``loss`` (reconstruction MSE), ``l1_weight``
        and the settings used
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    k = spectra.shape[-1]
    flat = np.asarray(spectra).reshape(-1, k, k)
    idx = np.sort(rng.choice(len(flat), min(n_train, len(flat)), replace=False))
    x = prepare(torch.as_tensor(flat[idx], dtype=torch.float32)).to(device)
    if init is not None:
        model = DomainAE(init.crop, init.latent)
        model.load_state_dict(init.state_dict())
    else:
        model = DomainAE(k, latent)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, weights = [], []
    bar = tqdm(range(epochs), desc="domains epochs", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        w1 = l1_weight(epoch, l1, l1_start, l1_ramp)
        perm = torch.as_tensor(rng.permutation(len(x)), device=device)
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[perm[start:start + batch_size]]
            recon, code = model(xb)
            mse = reconstruction_loss(recon, xb).mean()
            loss = mse + w1 * code["content"].abs().mean() + 1e-3 * (code["residual"] ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += mse.item() * len(xb)
        losses.append(total / len(x))
        weights.append(w1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
    record = dict(loss=losses, l1_weight=weights, epochs=epochs, n_train=len(x), batch_size=batch_size, lr=lr,
                  l1=l1, l1_start=l1_start, l1_ramp=l1_ramp, seed=seed, transfer=init is not None)
    return model.eval(), record


@torch.no_grad()
def predict(model: DomainAE, spectra, window: int, *, batch_size: int = 512, device: str = "cpu",
            progress: bool = False) -> dict[str, np.ndarray]:
    """Content, pose maps and reconstruction error of every window.

    Parameters
    ----------
    spectra : array (..., k, k); the leading shape (e.g. ``(T, ny, nx)``) is kept
    window : window side in pixels

    Returns
    -------
    dict of arrays with the leading shape: ``content`` (..., latent);
    ``orientation`` (degrees), ``period`` (pixels), ``anisotropy``,
    ``stretch``, ``shear`` and ``error`` (reconstruction MSE).
    """
    model = model.to(device).eval()
    k = spectra.shape[-1]
    lead = spectra.shape[:-2]
    flat = np.asarray(spectra).reshape(-1, k, k)
    parts = []
    bar = tqdm(total=len(flat), unit="window", desc="domains encode", disable=not progress, leave=False)
    for start in range(0, len(flat), batch_size):
        x = prepare(torch.as_tensor(flat[start:start + batch_size], dtype=torch.float32, device=device))
        code = model.encode(x)
        canonical = model.canonical(code["content"])
        recon = model.place(canonical, code["A"])
        out = pose_maps(code, canonical * (model.canon_mask * annulus(k, device)), window)
        out["content"] = code["content"].cpu().numpy()
        out["error"] = reconstruction_loss(recon, x).cpu().numpy()
        parts.append(out)
        bar.update(len(x))
    bar.close()
    return {name: np.concatenate([p[name] for p in parts]).reshape(lead + parts[0][name].shape[1:])
            for name in parts[0]}


def save_model(path, model: DomainAE, config: dict) -> None:
    """Write a ``domains`` bundle; ``config`` adds the windowing and training record."""
    cfg = dict(config, crop=model.crop, latent=model.latent)
    save_bundle(path, KIND, cfg, dict(model.state_dict()))


def load_model(path, device="cpu") -> tuple[DomainAE, dict]:
    """Read a ``domains`` bundle: ``(model, config)``."""
    cfg, tensors = load_bundle(path, KIND)
    model = DomainAE(cfg["crop"], cfg["latent"])
    model.load_state_dict(tensors)
    return model.to(device).eval(), cfg

