"""The CC-ST-AE model: encoder, base lattices, cycle losses, orientation seed, per-pattern fits; bundles."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.transforms import affine_matrix
from stemae.strain.ccstae.likelihood import (
    fit_disk_lattice,
    gather_windows,
    linear_sums,
    orientation_search,
    profile_band,
    sample_bilinear,
    solve_linear,
    table_lookup,
    window_offsets,
)
from stemae.strain.lattice import symmetry_angle
from stemae.strain.profiles import BACKGROUND_DR, DISK_DR

KIND = "ccstae"
PROFILES = ("template", "voigt")
CLASS_SCALE = 0.01  # distortion (log-stretch norm) that halves a class's weight, about 1 %
N_OUT = 7  # log_sx, log_sy, shear, cos, sin, tx, ty
NOISE_FLOOR = 0.05  # smallest model value (counts) in Poisson weights
SEARCH_TURN = math.radians(10.0)  # bundles whose training rotations span more search every pattern's orientation




def stretch(A: torch.Tensor) -> torch.Tensor:
    """Distortion of transforms ``(..., 2, 2)``: the norm of the log singular
    values (rotation-free; 0.01 is about 1 % strain)."""
    return torch.log(torch.linalg.svdvals(A).clamp_min(1e-6)).norm(dim=-1)


def prepare(patterns: torch.Tensor, size: int) -> torch.Tensor:
    """Encoder input ``(B, 1, size, size)``: square root (Poisson
    variance-stabilising), area-averaged to ``size``, unit mean per pattern."""
    x = torch.sqrt(patterns.clamp_min(0)).unsqueeze(1)
    x = nn.functional.adaptive_avg_pool2d(x, size)
    return x / x.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)


class Encoder(nn.Module):
    """A compact CNN: (B, 1, s, s) -> (B, n_out). About 0.1 M parameters."""

    def __init__(self, size: int, n_out: int, width: int = 16):
        super().__init__()
        layers, c = [], 1
        for c_out in (width, 2 * width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, c_out, 3, stride=2 if c > 1 else 1, padding=1), nn.GELU()]
            c = c_out
        self.features = nn.Sequential(*layers)
        side = math.ceil(size / 8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, 128), nn.GELU(), nn.Linear(128, n_out))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        return self.head(self.features(x))


class CCSTAE(nn.Module):
    """The model; see the module docstring.

    Parameters
    ----------
    G : (K, 2, 2) initial base reciprocal bases, pixels, columns g1, g2
    hk : (J, 2) integer reflection indices drawn for every base
    shells : (J,) shell index of each reflection (same ``|g|``)
    strength : (K, J) typical amplitude of each reflection relative to the
        pattern's total counts (weights of the orientation search)
    disks : ``{"template": (S + 1, n), "voigt": (S + 1, n)}`` disk profiles
        sampled every ``DISK_DR`` px, row 0 the central disk's and row
        ``s + 1`` shell ``s``'s Bragg disks': as measured (the mean central
        disk; each shell's pooled disks) and as pseudo-Voigt edges fitted to
        those measurements
    background : (m,) radial shape of the diffuse background, every ``BACKGROUND_DR`` px
    radius : disk radius (half maximum), pixels
    center : (x, y) detector position of the central beam for zero translation
    pattern_shape : (Qy, Qx) detector shape the model was trained on
    profile : which disk profile fits use, ``"template"`` or ``"voigt"``
    max_turn : largest rotation (radians) the orientation search considers
        (pi for a sample of many orientations)
    spread : rotations (radians) of the patterns relative to their base
        seen in training (99th percentile); starts stay within it
    input_size : encoder input side
    """

    def __init__(self, G, hk, shells, strength, disks: dict, background, radius: float, center, pattern_shape, *,
                 profile: str = "voigt", max_turn: float = math.pi, spread: float = math.pi, input_size: int = 32):
        super().__init__()
        t = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
        self.pattern_shape = tuple(int(v) for v in pattern_shape)
        G = t(G)
        self.K = G.shape[0]
        self.input_size = input_size
        self.radius = float(radius)
        self.profile = profile
        self.max_turn = float(max_turn)
        self.spread = float(spread)
        self.G = nn.Parameter(G.clone())
        self.register_buffer("hk", t(hk))
        self.register_buffer("shells", t(shells, torch.int64))
        self.register_buffer("strength", t(strength))
        self.register_buffer("disk_template", t(disks["template"]))
        self.register_buffer("disk_voigt", t(disks["voigt"]))
        self.register_buffer("background", t(background))
        self.register_buffer("center", t(center))
        self.encoder = Encoder(input_size, self.K * (N_OUT + 1))

    def disk(self) -> torch.Tensor:
        """The disk profiles fits use (see ``profile``), (S + 1, n)."""
        return self.disk_voigt if self.profile == "voigt" else self.disk_template

    def band(self) -> tuple[float, float]:
        """Inner and outer radius (px) of the fits' windows: every profile's
        edge band (:func:`~stemae.strain.ccstae.likelihood.profile_band`), at most 0.45 of
        the shortest reflection."""
        bands = [profile_band(d, DISK_DR) for d in self.disk()]
        gmin = self.reflections().detach().norm(dim=-1).min().item()
        return min(b[0] for b in bands), min(max(b[1] for b in bands), 0.45 * gmin)

    def rows(self) -> torch.Tensor:
        """Profile row of each reflection (its shell + 1), (J,)."""
        return self.shells + 1

    def reflections(self) -> torch.Tensor:
        """Base reflection vectors ``(K, J, 2)`` in pixels."""
        return self.hk @ self.G.transpose(-1, -2)

    def forward(self, patterns: torch.Tensor):
        """Class logits ``(B, K)``, transforms ``A`` ``(B, K, 2, 2)`` and
        origins ``(B, K, 2)`` for patterns ``(B, Qy, Qx)``."""
        out = self.encoder(prepare(patterns, self.input_size))
        logits = out[:, : self.K]
        p = out[:, self.K :].reshape(-1, self.K, N_OUT)
        rot = torch.atan2(p[..., 4], 1.0 + p[..., 3])  # zero output: identity
        params = torch.stack([0.05 * p[..., 0], 0.05 * p[..., 1], 0.05 * p[..., 2], rot, 2.0 * p[..., 5], 2.0 * p[..., 6]], -1)
        M = affine_matrix(params)
        return logits, M[..., :2], self.center + M[..., 2], params

    def cycle_losses(self, patterns, A, origin):
        """Forward and inverse cycle losses per pattern and class, ``(B, K)`` each.

        Both compare the Poisson-weighted chi-square of the pattern model over
        windows holding every Bragg disk whose centre lies at least a radius
        inside the detector with that of the same windows without disks: the
        share of the windows' contrast the disks leave unexplained (1 when
        they miss, lowest when they sit on the pattern's disks).
        """
        B, H, W = patterns.shape
        K = self.K
        disk = self.disk()
        # Whole disks, not edge bands: a band that slides off a disk onto its
        # plateau would look brighter, as if the disk fitted better.
        inner, outer = 0.0, max(profile_band(d, DISK_DR)[1] for d in disk)
        offsets = window_offsets(outer, inner, patterns.device)
        g = self.reflections()  # (K, J, 2)
        J = g.shape[1]
        rows = self.rows().repeat(K).view(1, K * J, 1)
        centers = origin[:, :, None] + torch.einsum("bkij,kmj->bkmi", A, g)  # (B, K, J, 2)
        margin = self.radius + 1.0
        on = ((centers[..., 0] > margin) & (centers[..., 0] < W - 1 - margin)
              & (centers[..., 1] > margin) & (centers[..., 1] < H - 1 - margin)).to(patterns.dtype)
        flat_c = centers.reshape(B, K * J, 2)
        o_flat = origin.repeat_interleave(J, dim=1)  # (B, K*J, 2)

        def loss(vals, r, r_bg, w0):
            # Chi-square of the model over that of the same model without its
            # disks (offsets and background only): near 1 where the windows
            # miss the disks, smallest where they sit on them.
            shape = (B * K, J, -1)
            vals, w0 = vals.reshape(shape), w0.reshape(shape)
            prof = table_lookup(disk, DISK_DR, r, rows)[0].reshape(shape)
            m = table_lookup(self.background, BACKGROUND_DR, r_bg)[0].reshape(shape)
            def model_of(w):
                a, b, s = solve_linear(linear_sums(vals, prof, m, w, True))
                return a[..., None] * prof + b[..., None] + s[:, None, None] * m, a

            model, _ = model_of(w0)
            w = w0 / (model.detach().clamp_min(0) + NOISE_FLOOR)
            model, a = model_of(w)
            chi = (w * (vals - model) ** 2).sum(-1)
            wp = w * prof
            explained = a * a * ((wp * prof).sum(-1) - wp.sum(-1) ** 2 / w.sum(-1).clamp_min(1e-12))
            chi, explained = chi.reshape(B, K, J).sum(-1), explained.reshape(B, K, J).sum(-1)
            return chi / (chi + explained).clamp_min(1e-12)

        # Inverse cycle: base drawn through the transform, at the input's pixels.
        vals, px, py, inside = gather_windows(patterns, flat_c, offsets)
        r = torch.hypot(px - flat_c[..., 0, None], py - flat_c[..., 1, None])
        w0 = inside * on.reshape(B, K * J, 1) * ((r >= inner) & (r <= outer))
        inv = loss(vals, r, torch.hypot(px - o_flat[..., 0, None], py - o_flat[..., 1, None]), w0)
        # Forward cycle: the input pulled onto the base grid through the transform.
        d = offsets.to(patterns.dtype)
        Ad = torch.einsum("bkij,pj->bkpi", A, d).repeat_interleave(J, dim=1)  # (B, K*J, P, 2)
        pts = flat_c[:, :, None] + Ad
        vals_f = sample_bilinear(patterns, pts)
        r_f = Ad.norm(dim=-1)  # in the base frame a real (unresized) disk appears distorted by A^-1
        w0_f = on.reshape(B, K * J, 1) * ((r_f >= inner) & (r_f <= outer))
        fwd = loss(vals_f, r_f, (pts - o_flat[:, :, None]).norm(dim=-1), w0_f)
        return fwd, inv

    def seed_rotation(self, x: torch.Tensor, A: torch.Tensor, origin: torch.Tensor, k,
                      smallest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Transforms ``A`` (B, 2, 2) of base ``k`` (an int, or (B,) per
        pattern) turned by the orientation search
        (:func:`~stemae.strain.ccstae.likelihood.orientation_search`) within ``max_turn``,
        and the turn (B,) in radians; ``smallest`` takes the smallest turn
        equivalent under the lattice's rotational symmetry (a continuous
        target for the encoder). No gradient flows through the turn."""
        with torch.no_grad():
            g = self.reflections()[k]
            g = g.expand(len(x), -1, -1) if g.dim() == 2 else g
            # Matched-filter weights: log(1 + disk / background) per reflection.
            bg = table_lookup(self.background, BACKGROUND_DR, g.norm(dim=-1))[0]
            weights = torch.log1p(self.strength[k] / bg.clamp_min(1e-12 * self.strength.max()))
            turn, _ = orientation_search(x, origin, g @ A.transpose(-1, -2), weights, self.shells, self.radius,
                                         max_turn=self.max_turn)
            if smallest:
                period = symmetry_angle(self.G[0].detach().cpu().double().numpy())
                turn = torch.remainder(turn + period / 2, period) - period / 2
            c, s = torch.cos(turn), torch.sin(turn)
            R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return R @ A, turn

    def start(self, x: torch.Tensor, origin: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Where a fit of patterns ``x`` with base ``k`` (B,) and central beam
        ``origin`` (B, 2) starts: the base itself or, for a sample of many
        orientations, the base turned by the orientation search. Returns
        transforms (B, 2, 2)."""
        A0 = torch.eye(2, dtype=x.dtype, device=x.device).expand(len(x), 2, 2)
        if self.max_turn > SEARCH_TURN:
            A0, _ = self.seed_rotation(x, A0, origin, k)
        return A0

    def fit_patterns(self, x: torch.Tensor, k: torch.Tensor | None, origin: torch.Tensor, iterations: int,
                     fit=fit_disk_lattice) -> dict:
        """:func:`~stemae.strain.ccstae.likelihood.fit_disk_lattice` (or ``fit``, the
        same compiled) of patterns ``x`` (B, Qy, Qx) from base ``k`` (B,) and
        central beam ``origin`` (B, 2) (see :meth:`start`), or with ``k``
        None from every base, each pattern going on from the one whose disks
        sit best on it. The result's ``base`` (B,) is the base fitted."""
        if k is None:
            every = [torch.full((len(x),), kk, dtype=torch.long, device=x.device) for kk in range(self.K)]
            A0, g = torch.stack([self.start(x, origin, kk) for kk in every], 1), self.reflections()
        else:
            A0, g = self.start(x, origin, k), self.reflections()[k]
        out = fit(x, origin, A0, g, self.disk(), DISK_DR, self.radius, rows=self.rows(), band=self.band(),
                  background=self.background, background_dr=BACKGROUND_DR, iterations=iterations,
                  regather=tuple(range(min(2, iterations))), local_background=False, noise_floor=NOISE_FLOOR)
        return {**out, "base": out["start"] if k is None else k}

    def distortion(self, G: torch.Tensor) -> torch.Tensor:
        """Distortion (B, K) of lattices ``G`` (B, 2, 2) relative to each base (see :func:`stretch`)."""
        return stretch(G[:, None] @ torch.linalg.inv(self.G)[None])


def save(model: CCSTAE, path, record: dict | None = None):
    """Save a bundle folder (config.json + weights.safetensors)."""
    config = dict(
        n_classes=model.K,
        input_size=model.input_size,
        pattern_shape=list(model.pattern_shape),
        n_reflections=int(model.hk.shape[0]),
        radius=model.radius,
        profile=model.profile,
        max_turn=model.max_turn,
        spread=model.spread,
        training=record or {},
    )
    return save_bundle(path, KIND, config, model.state_dict())


def load(path, profile: str | None = None) -> CCSTAE:
    """Load a bundle written by :func:`save`; refuses corrupt or foreign
    bundles. ``profile`` overrides the disk profile the fits use."""
    config, t = load_bundle(path, KIND)
    profile = profile or config["profile"]
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    model = CCSTAE(t["G"].numpy(), t["hk"].numpy(), t["shells"].numpy(), t["strength"].numpy(),
                   dict(template=t["disk_template"].numpy(), voigt=t["disk_voigt"].numpy()), t["background"].numpy(),
                   config["radius"], t["center"].numpy(), config["pattern_shape"], profile=profile,
                   max_turn=config["max_turn"], spread=config["spread"], input_size=config["input_size"])
    model.load_state_dict(t)
    return model.eval()
