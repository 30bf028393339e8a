"""Cycle-consistent spatial-transforming autoencoder (CC-ST-AE) for strain and phase.

Without labels, the model learns from a datacube:

- ``K`` base lattices (one per phase or grain type): reciprocal bases
  ``G_k`` in detector pixels plus the disk radius and edge (the probe
  aperture image, shared);
- an encoder that maps each pattern to class logits and, for every class,
  an affine transform ``[A | t]`` (log scales, shear, rotation, translation
  for descan) taking the base onto the pattern.

The decoder is a spatial transformer acting on the base's *lattice*: disks
of fixed shape are drawn at ``o + A g_j``, because a strained crystal moves
its disks without resizing them (warping a whole pattern would resize them
too and bias the strain). Training minimises two cycle losses over the disk
windows, outside the central beam and away from the detector edge:

1. forward: the input sampled on the base grid pulled through the transform
   against the base (whose disks are pre-distorted by ``A^-1`` so that no
   size change is implied);
2. inverse: the base pushed through the transform against the input;

each with per-disk amplitudes and local background solved in closed form
(intensities vary across a scan), Poisson weights, and a small penalty that
keeps ``A`` near a rotation. At prediction the encoder's transform is
refined per pattern by a few Gauss-Newton steps on the inverse loss
(:func:`stemae.nn.lattice.refine_lattice`), which gives sub-pixel precision;
strain follows from ``G = A G_k`` through :mod:`stemae.geometry`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn
from tqdm.auto import tqdm

from stemae.data.blocks import iter_row_blocks, read_patterns, rows_for_budget
from stemae.geometry import reference_mask, rotation_matrix, strain_maps
from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.lattice import (
    disk_profile,
    fit_amplitudes,
    gather_windows,
    refine_lattice,
    ring_offsets,
    ring_rotation,
    sample_bilinear,
)
from stemae.nn.transforms import affine_matrix
from stemae.strain.classical import detect_disks, fit_lattices
from stemae.strain.lattice import align_to_reference

KIND = "ccstae"
RING_TRUST_DEG = 1.5  # encoder rotations within this of the ring estimate are kept
RING_GAIN = 0.3  # training: ... and so are those the ring does not clearly improve on
RING_GAIN_TRY = 0.05  # prediction: a second fit from the ring's turn is tried above this gain
CHI2_MARGIN = 50.0  # ... and kept if its chi-square is lower by this much (noise gives a few)
CLASS_SCALE = 0.01  # distortion (log-stretch norm) that halves a class's weight, about 1 %
N_OUT = 7  # log_sx, log_sy, shear, cos, sin, tx, ty


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
    radius, edge : initial disk radius and edge blur, pixels
    center : (x, y) detector position of the central beam for zero translation
    pattern_shape : (Qy, Qx) detector shape the model was trained on
    input_size : encoder input side
    """

    def __init__(self, G, hk, radius: float, edge: float, center, pattern_shape, input_size: int = 32):
        super().__init__()
        self.pattern_shape = tuple(int(v) for v in pattern_shape)
        G = torch.as_tensor(np.asarray(G), dtype=torch.float32)
        self.K = G.shape[0]
        self.input_size = input_size
        self.G = nn.Parameter(G.clone())
        self.log_radius = nn.Parameter(torch.tensor(math.log(radius)))
        self.log_edge = nn.Parameter(torch.tensor(math.log(edge)))
        self.register_buffer("hk", torch.as_tensor(np.asarray(hk), dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor(np.asarray(center), dtype=torch.float32))
        self.encoder = Encoder(input_size, self.K * (N_OUT + 1))

    @property
    def radius(self):
        return self.log_radius.exp()

    @property
    def edge(self):
        return self.log_edge.exp()

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

    def cycle_losses(self, patterns, A, origin, noise_floor: float = 1.0):
        """Forward and inverse cycle losses per pattern and class, ``(B, K)`` each.

        Windows lie on the edge band of every disk (the central beam
        excluded) whose centre is at least one radius inside the detector.
        """
        B, H, W = patterns.shape
        R, s = self.radius, self.edge
        offsets = ring_offsets(float(R.detach()), float(s.detach()), patterns.device)
        g = self.reflections()  # (K, J, 2)
        centers = origin[:, :, None] + torch.einsum("bkij,kmj->bkmi", A, g)  # (B, K, J, 2)
        margin = float(R.detach()) + 1.0
        on = ((centers[..., 0] > margin) & (centers[..., 0] < W - 1 - margin)
              & (centers[..., 1] > margin) & (centers[..., 1] < H - 1 - margin)).to(patterns.dtype)
        K, J = g.shape[:2]
        flat_c = centers.reshape(B, K * J, 2)
        # Inverse cycle: base drawn through the transform, at the input's pixels.
        vals, coords, inside = gather_windows(patterns, flat_c, offsets)
        r = (coords - flat_c[:, :, None]).norm(dim=-1)
        prof = disk_profile(r, R, s)
        w0 = inside.to(patterns.dtype) * on.reshape(B, K * J, 1)
        a, c = fit_amplitudes(vals, prof, w0)
        model = a[..., None] * prof + c[..., None]
        w = w0 / (model.detach().clamp_min(0) + noise_floor)
        inv = (w * (vals - model) ** 2).reshape(B, K, -1).sum(-1) / w0.reshape(B, K, -1).sum(-1).clamp_min(1)
        # Forward cycle: the input pulled onto the base grid through the transform.
        d = offsets.to(patterns.dtype)  # base-frame offsets around each base disk
        pts = flat_c[:, :, None] + torch.einsum("bkij,pj->bkpi", A, d).repeat_interleave(J, dim=1)
        vals_f = sample_bilinear(patterns, pts)
        # In the base frame a real (unresized) disk appears distorted by A^-1.
        r_f = torch.einsum("bkij,pj->bkpi", A, d).norm(dim=-1).repeat_interleave(J, dim=1)
        # Interpolation blurs the sampled input: the disk shape learns from the
        # inverse cycle only, which reads whole pixels.
        prof_f = disk_profile(r_f, R.detach(), s.detach())
        a_f, c_f = fit_amplitudes(vals_f, prof_f, w0)
        model_f = a_f[..., None] * prof_f + c_f[..., None]
        w_f = w0 / (model_f.detach().clamp_min(0) + noise_floor)
        fwd = (w_f * (vals_f - model_f) ** 2).reshape(B, K, -1).sum(-1) / w0.reshape(B, K, -1).sum(-1).clamp_min(1)
        return fwd, inv


def seed_rotation(x: torch.Tensor, A: torch.Tensor, origin: torch.Tensor, reflections: torch.Tensor,
                  radius: float, min_gain: float = RING_GAIN) -> tuple[torch.Tensor, torch.Tensor]:
    """Transforms ``A`` (B, 2, 2) turned to match each pattern's first
    reflection ring (:func:`stemae.nn.lattice.ring_rotation`) where the two
    disagree by more than ``RING_TRUST_DEG`` and the turn improves the ring
    match by more than ``min_gain``, so that fits start close in any grain
    orientation. ``origin`` (B, 2); ``reflections`` (B, J, 2) or (J, 2), the
    base's. No gradient flows through the correction.

    Returns
    -------
    A : (B, 2, 2), turned where taken; taken : (B,) bool
    """
    with torch.no_grad():
        turned = reflections @ A.transpose(-1, -2)
        turn, gain = ring_rotation(x, origin, turned, radius)
        taken = (turn.abs() > math.radians(RING_TRUST_DEG)) & (gain > min_gain)
        turn = torch.where(taken, turn, torch.zeros_like(turn))
        c, s = torch.cos(turn), torch.sin(turn)
        R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return R @ A, taken


def _init_bases(data, n_classes: int, n_init: int, seed: int, progress: bool):
    """Base lattices from a classical fit of a sample of patterns, clustered
    into ``n_classes`` groups by their lattice shape (k-means)."""
    Ry, Rx = data.shape[:2]
    rng = np.random.default_rng(seed)
    n = min(n_init, Ry * Rx)
    idx = np.sort(rng.choice(Ry * Rx, n, replace=False))
    r, c = np.unravel_index(idx, (Ry, Rx))
    sample = read_patterns(data, r, c)[:, None]
    disks = detect_disks(sample, progress=progress)
    # Index against the lattice of the pattern with the strongest disks (a
    # Bragg vector map over many grains would mix orientations).
    best = np.zeros(disks["intensity"].shape[:2], bool)
    best.flat[int(np.argmax(np.sort(disks["intensity"], axis=-1)[..., -8:-1].sum(-1)))] = True
    fit = fit_lattices(disks, reference=best)
    G = fit["G"].reshape(-1, 2, 2)
    ok = np.isfinite(G).all(axis=(1, 2))
    if ok.sum() < n_classes:
        raise ValueError("too few patterns could be indexed to initialise the bases")
    # Cluster lattice *shapes*: turn every lattice so that g1 lies along +x
    # (grains of one phase in other orientations then fall together). Each
    # base is its members' median shape in the orientation of its most
    # typical member.
    G = align_to_reference(G[ok], G[ok][0])
    phi = np.arctan2(G[:, 1, 0], G[:, 0, 0])
    shapes = align_to_reference(rotation_matrix(-phi) @ G, rotation_matrix(-phi[0]) @ G[0])
    feats = shapes.reshape(len(G), 4)
    scale = feats.std(0) + 1e-12
    _, label = kmeans2(feats / scale, n_classes, minit="++", seed=seed)
    Gk = []
    for j in range(n_classes):
        members = np.flatnonzero(label == j) if (label == j).any() else np.arange(len(G))
        shape = np.median(feats[members], axis=0)
        typical = members[np.argmin(np.abs(feats[members] - shape).sum(1))]
        Gk.append(rotation_matrix(phi[typical]) @ shape.reshape(2, 2))
    Gk = np.array(Gk)
    order = np.argsort(-np.abs(np.linalg.det(Gk)))  # class 0: largest reciprocal cell
    return Gk[order], disks["radius"], disks["center"]


def _reflection_indices(G: np.ndarray, center, shape, radius: float) -> np.ndarray:
    """Indices (J, 2) of reflections whose disks lie fully on the detector for
    every base in ``G`` (K, 2, 2) (with a 3 % margin for strain)."""
    Qy, Qx = shape
    gmin = np.linalg.norm(G, axis=1).min()
    n = int(np.ceil(max(Qy, Qx) / gmin)) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    hk = hk[(hk != 0).any(1)]
    ok = np.ones(len(hk), bool)
    for Gk in G:
        for f in (0.97, 1.03):
            p = np.asarray(center) + f * hk @ Gk.T
            ok &= (p[:, 0] > radius + 2) & (p[:, 0] < Qx - 3 - radius) & (p[:, 1] > radius + 2) & (p[:, 1] < Qy - 3 - radius)
    return hk[ok]


def fit(
    data,
    *,
    n_classes: int = 1,
    epochs: int = 3,
    n_train: int = 1024,
    n_init: int = 256,
    batch_size: int = 128,
    lr: float = 2e-3,
    reg: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[CCSTAE, dict]:
    """Train a CC-ST-AE on a datacube.

    Parameters
    ----------
    data : array-like (Ry, Rx, Qy, Qx)
    n_classes : number of bases (phases or grain types)
    epochs : passes over the training sample
    n_train : patterns drawn (without replacement, seeded) to train on
    n_init : patterns fitted classically to initialise the bases
    batch_size, lr : optimiser settings (Adam)
    reg : weight of the penalty on stretch and shear of ``A``
    seed : makes the whole fit deterministic
    device : ``"cpu"`` or ``"cuda"``
    progress : show progress bars

    Returns
    -------
    model : CCSTAE
    record : dict with the per-epoch ``loss`` and the settings used
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    Gk, radius, center = _init_bases(data, n_classes, n_init, seed, progress)
    hk = _reflection_indices(Gk, center, data.shape[2:], radius)
    model = CCSTAE(Gk, hk, radius, 0.5, center, data.shape[2:]).to(device)
    Ry, Rx = data.shape[:2]
    idx = np.sort(rng.choice(Ry * Rx, min(n_train, Ry * Rx), replace=False))
    r, c = np.unravel_index(idx, (Ry, Rx))
    train = torch.as_tensor(read_patterns(data, r, c)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    bar = tqdm(range(epochs), desc="ccstae epochs", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.as_tensor(rng.permutation(len(train)), device=device)
        total = 0.0
        for start in range(0, len(train), batch_size):
            x = train[perm[start : start + batch_size]]
            logits, A, origin, params = model(x)
            g = model.reflections()
            A = torch.stack([seed_rotation(x, A[:, k], origin[:, k], g[k], model.radius.item())[0]
                             for k in range(model.K)], 1)
            fwd, inv = model.cycle_losses(x, A, origin)
            per_class = fwd + inv + reg * (params[..., :3] ** 2).sum(-1) / 0.05**2
            # Every base learns a transform for every pattern; a pattern's
            # class is the base it fits with the least distortion, and mostly
            # that base's lattice learns from it.
            distortion = stretch(A.detach())
            target = distortion.argmin(-1)
            q = 0.9 * torch.softmax(-distortion / CLASS_SCALE, -1) + 0.1 / model.K
            loss = (q * per_class).sum(-1).mean() + nn.functional.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        losses.append(total / len(train))
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
    record = dict(loss=losses, epochs=epochs, n_train=len(train), n_init=n_init, batch_size=batch_size, lr=lr,
                  reg=reg, seed=seed, n_classes=n_classes)
    return model, record


@torch.no_grad()
def predict(model: CCSTAE, data, *, batch_size: int = 256, refine_iterations: int = 3, device: str = "cpu",
            progress: bool = False) -> dict[str, np.ndarray]:
    """Transforms, classes and lattices of every pattern.

    Returns
    -------
    dict with ``G`` (Ry, Rx, 2, 2) local reciprocal bases in pixels,
    ``origin`` (Ry, Rx, 2), ``phase`` (Ry, Rx) class index,
    ``probabilities`` (Ry, Rx, K), ``rms`` (Ry, Rx) fit residual and
    ``n_disks`` (Ry, Rx).
    """
    model = model.to(device).eval()
    Ry, Rx, Qy, Qx = data.shape
    R, s = model.radius.item(), model.edge.item()
    g_all = model.reflections()
    out = {k: [] for k in ("G", "origin", "phase", "probabilities", "rms", "n_disks")}
    bar = tqdm(total=Ry * Rx, unit="pattern", desc="ccstae predict", disable=not progress, leave=False)
    rows = rows_for_budget(data.shape, 32 * 2**20)
    for _, block in iter_row_blocks(data, rows):
        flat = torch.as_tensor(block.reshape(-1, Qy, Qx), device=device)
        for start in range(0, len(flat), batch_size):
            x = flat[start : start + batch_size]
            logits, A, origin, _ = model(x)
            k = logits.argmax(-1)
            b = torch.arange(len(x), device=device)
            o0, A0, g = origin[b, k], A[b, k], g_all[k]
            o, A1, rms, nd, chi2 = refine_lattice(x, o0, A0, g, R, s, iterations=refine_iterations)
            # Where the first reflection ring suggests another orientation, fit
            # from there too; keep that fit only if it is decisively better
            # (a chi-square drop far beyond what fitting noise gives).
            A_turned, alt = seed_rotation(x, A0, o0, g, R, min_gain=RING_GAIN_TRY)
            if alt.any():
                o2, A2, rms2, nd2, chi2b = refine_lattice(x[alt], o0[alt], A_turned[alt], g[alt], R, s,
                                                          iterations=refine_iterations)
                better = torch.zeros_like(alt)
                better[alt] = chi2b < chi2[alt] - CHI2_MARGIN
                sub = better[alt]
                o[better], A1[better], rms[better], nd[better] = o2[sub], A2[sub], rms2[sub], nd2[sub]
            G = A1 @ model.G[k]
            # Phase: the base this refined lattice matches with least distortion.
            distortion = stretch(G[:, None] @ torch.linalg.inv(model.G)[None])
            out["G"].append(G.cpu().numpy())
            out["origin"].append(o.cpu().numpy())
            out["phase"].append(distortion.argmin(-1).cpu().numpy())
            out["probabilities"].append(torch.softmax(-0.5 * (distortion / CLASS_SCALE) ** 2, -1).cpu().numpy())
            out["rms"].append(rms.cpu().numpy())
            out["n_disks"].append(nd.cpu().numpy())
            bar.update(len(x))
    bar.close()
    shapes = {"G": (2, 2), "origin": (2,), "phase": (), "probabilities": (model.K,), "rms": (), "n_disks": ()}
    return {k: np.concatenate(v).reshape((Ry, Rx) + shapes[k]) for k, v in out.items()}


def save(model: CCSTAE, path, record: dict | None = None):
    """Save a bundle folder (config.json + weights.safetensors)."""
    config = dict(
        n_classes=model.K,
        input_size=model.input_size,
        pattern_shape=list(model.pattern_shape),
        n_reflections=int(model.hk.shape[0]),
        radius=model.radius.item(),
        edge=model.edge.item(),
        training=record or {},
    )
    return save_bundle(path, KIND, config, model.state_dict())


def load(path) -> CCSTAE:
    """Load a bundle written by :func:`save`; refuses corrupt or foreign bundles."""
    config, tensors = load_bundle(path, KIND)
    model = CCSTAE(tensors["G"].numpy(), tensors["hk"].numpy(), config["radius"], config["edge"],
                   tensors["center"].numpy(), config["pattern_shape"], config["input_size"])
    model.load_state_dict(tensors)
    return model.eval()


def map_strain(pred: dict, reference=None, max_rms: float | None = None) -> dict:
    """Strain maps from :func:`predict` output, relative to a reference region.

    The local bases are relabelled to the lattice-equivalent basis closest to
    the reference's, so symmetry-equivalent transforms give one answer.
    """
    G = pred["G"].astype(np.float64)
    mask = reference_mask(G.shape[:2], reference)
    ok = np.isfinite(G).all(axis=(-1, -2))
    G_ref0 = np.median(G[mask & ok], axis=0)
    G = align_to_reference(G, G_ref0)
    valid = ok & (pred["n_disks"] >= 3)
    if max_rms is not None:
        valid &= pred["rms"] <= max_rms
    maps, G_ref = strain_maps(G, reference, valid)
    out = dict(maps)
    out.update(valid=valid, g1=G[..., :, 0].astype(np.float32), g2=G[..., :, 1].astype(np.float32),
               origin=pred["origin"].astype(np.float32), g_ref=G_ref, phase=pred["phase"],
               probabilities=pred["probabilities"].astype(np.float32), rms=pred["rms"].astype(np.float32),
               n_disks=pred["n_disks"].astype(np.int16))
    return out
