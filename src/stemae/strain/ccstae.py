"""Cycle-consistent spatial-transforming autoencoder (CC-ST-AE) for strain and phase.

Without labels, the model learns from a datacube:

- ``K`` base lattices (one per phase or grain type): reciprocal bases
  ``G_k`` in detector pixels, found on pooled data (patterns of small tiles
  of neighbouring positions summed on their central beams, so the lattice
  shows at any dose where a sum shows it) and refined in training;
- an encoder that maps each pattern to class logits and, for every class,
  an affine transform ``[A | t]`` (log scales, shear, rotation, translation
  for descan) taking the base onto the pattern.

The decoder is a spatial transformer acting on the base's *lattice*: disks
of the measured shape (the data's own mean central disk, or a pseudo-Voigt
edge fitted to it) are drawn at ``o + A g_j``, because a strained crystal
moves its disks without resizing them. The pattern model
(:mod:`stemae.nn.lattice`) adds per-disk amplitudes and offsets and a
diffuse background of measured radial shape. Training minimises two cycle
losses, Poisson-weighted over the disks' edge bands, outside the central
beam:

1. forward: the input sampled on the base grid pulled through the transform
   against the base (whose disks are pre-distorted by ``A^-1`` so that no
   size change is implied);
2. inverse: the base pushed through the transform against the input;

plus a small penalty that keeps ``A`` near a rotation. At prediction the
encoder's transform is turned by a matched-filter orientation search over
all reflection shells and refined per pattern by a maximum-likelihood fit
(:func:`stemae.nn.lattice.fit_disk_lattice`) of every disk, those cut by the
detector edge included, whose Fisher information gives each position's
uncertainty; strain follows from ``G = A G_k`` through :mod:`stemae.geometry`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn
from tqdm.auto import tqdm

from stemae.data.blocks import read_patterns, rows_for_budget
from stemae.errors import InputError
from stemae.geometry import (
    deformation_from_reciprocal,
    polar_decomposition,
    reciprocal_from_deformation,
    reference_mask,
    rotation_matrix,
    strain_from_deformation,
    strain_maps,
)
from stemae.nn.bundle import load_bundle, save_bundle
from stemae.nn.lattice import (
    fit_central_beam,
    fit_disk_lattice,
    gather_windows,
    linear_sums,
    solve_linear,
    orientation_search,
    profile_band,
    sample_bilinear,
    table_lookup,
    window_offsets,
)
from stemae.nn.transforms import affine_matrix
from stemae.runner import run
from stemae.strain.diagnostics import DIAGNOSTICS, batch_statistics, finish_statistics, statistics_results
from stemae.strain.disks import estimate_probe, find_disks
from stemae.strain.lattice import (
    align_to_reference,
    fit_lattice,
    relabel_covariance,
    symmetry_angle,
)
from stemae.strain.lattice import orientation_search as index_search
from stemae.strain.pooled import (aligned_sum, beam_centers, disk_basis, lattice_check, tile_positions,
                                  tile_size)
from stemae.strain.profiles import (
    BACKGROUND_DR,
    DISK_DR,
    background_profile,
    disk_profile,
    fit_pseudo_voigt,
    ring_median_background,
    shell_profiles,
)

KIND = "ccstae"
PROFILES = ("template", "voigt")
CLASS_SCALE = 0.01  # distortion (log-stretch norm) that halves a class's weight, about 1 %
N_OUT = 7  # log_sx, log_sy, shear, cos, sin, tx, ty
TURN_MARGIN = math.radians(3.0)  # orientation search reaches this beyond the training sample's spread
NOISE_FLOOR = 0.05  # smallest model value (counts) in Poisson weights
PHASE_ROUNDS = 2  # passes of refitting positions whose neighbours hold another phase
SEARCH_TURN = math.radians(10.0)  # bundles whose training rotations span more search every pattern's orientation
KEEP_INFORMATION = 0.995  # share of each base's strain information the kept reflections hold


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
        edge band (:func:`~stemae.nn.lattice.profile_band`), at most 0.45 of
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
        (:func:`~stemae.nn.lattice.orientation_search`) within ``max_turn``,
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

    def fit_patterns(self, x: torch.Tensor, k: torch.Tensor, origin: torch.Tensor, iterations: int,
                     evaluate_only: bool = False) -> dict:
        """:func:`~stemae.nn.lattice.fit_disk_lattice` of patterns ``x`` (B, Qy, Qx)
        from base ``k`` (B,) and central beam ``origin`` (B, 2) (see
        :meth:`start`); ``evaluate_only`` returns how badly the base's disks
        sit on each pattern at the start (``misfit``)."""
        return fit_disk_lattice(x, origin, self.start(x, origin, k), self.reflections()[k], self.disk(), DISK_DR,
                                self.radius, rows=self.rows(), band=self.band(), background=self.background,
                                background_dr=BACKGROUND_DR, iterations=iterations,
                                regather=tuple(range(min(2, iterations))), local_background=False,
                                noise_floor=NOISE_FLOOR, evaluate_only=evaluate_only)

    def distortion(self, G: torch.Tensor) -> torch.Tensor:
        """Distortion (B, K) of lattices ``G`` (B, 2, 2) relative to each base (see :func:`stretch`)."""
        return stretch(G[:, None] @ torch.linalg.inv(self.G)[None])


def _refine_bases(G: np.ndarray, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bases re-estimated from many lattices ``G`` (N, 2, 2): each lattice
    goes to the base it matches with least distortion, and each base becomes
    its members' median stretch and mean rotation relative to it (robust
    to the odd failed fit). Returns bases (K, 2, 2) and classes (N,)."""
    dist = np.stack([np.linalg.norm(np.log(np.linalg.svd(align_to_reference(G, Gk) @ np.linalg.inv(Gk),
                                                           compute_uv=False)), axis=-1) for Gk in bases], 1)
    cls = dist.argmin(1)
    out = bases.copy()
    for k, Gk in enumerate(bases):
        members = align_to_reference(G[cls == k], Gk)
        if len(members) == 0:
            continue
        R, U = polar_decomposition(deformation_from_reciprocal(members, Gk))
        angle = np.arctan2(R[:, 1, 0], R[:, 0, 0]).mean()
        out[k] = reciprocal_from_deformation(rotation_matrix(angle) @ np.median(U, axis=0), Gk)
    return out, cls


def _cluster_bases(G: np.ndarray, n_classes: int, seed: int):
    """Bases from many lattices ``G`` (N, 2, 2), one labelling: their
    *shapes* (each turned so that g1 lies along +x, so grains of one phase
    in other orientations fall together) clustered by k-means into
    ``n_classes`` groups, each base its members' median shape in the
    orientation of its most typical member; class 0 has the largest
    reciprocal cell. Returns bases (n_classes, 2, 2) and each lattice's
    class (N,)."""
    phi = np.arctan2(G[:, 1, 0], G[:, 0, 0])
    shapes = align_to_reference(rotation_matrix(-phi) @ G, rotation_matrix(-phi[0]) @ G[0])
    feats = shapes.reshape(len(G), 4)
    _, label = kmeans2(feats / (feats.std(0) + 1e-12), n_classes, minit="++", seed=seed)
    bases = []
    for j in range(n_classes):
        members = np.flatnonzero(label == j) if (label == j).any() else np.arange(len(G))
        shape = np.median(feats[members], axis=0)
        typical = members[np.argmin(np.abs(feats[members] - shape).sum(1))]
        bases.append(rotation_matrix(phi[typical]) @ shape.reshape(2, 2))
    bases = np.array(bases)
    order = np.argsort(-np.abs(np.linalg.det(bases)))
    return bases[order], np.argsort(order)[label]


def _reflection_indices(G: np.ndarray, center, shape, radius: float) -> np.ndarray:
    """Indices (J, 2) of reflections whose disks reach the detector (centre
    at most half a radius off it) for some base in ``G`` (K, 2, 2) at up to
    3 % strain; the fits drop those that fall off per pattern."""
    Qy, Qx = shape
    gmin = np.linalg.norm(G, axis=1).min()
    n = int(np.ceil(max(Qy, Qx) / gmin)) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    hk = hk[(hk != 0).any(1)]
    ok = np.zeros(len(hk), bool)
    m = 0.5 * radius
    for Gk in G:
        for f in (0.97, 1.0, 1.03):
            p = np.asarray(center) + f * hk @ Gk.T
            ok |= (p[:, 0] > -m) & (p[:, 0] < Qx - 1 + m) & (p[:, 1] > -m) & (p[:, 1] < Qy - 1 + m)
    return hk[ok]


def _informative(information: np.ndarray, classes: np.ndarray, n_classes: int,
                 keep: float = KEEP_INFORMATION) -> np.ndarray:
    """Reflections (J,) bool worth fitting: for every base, the fewest that
    hold a share ``keep`` of its patterns' information on the transform.

    ``information`` (N, J) each pattern's per-disk information
    (``disk_information`` of :func:`~stemae.nn.lattice.fit_disk_lattice`,
    0 where a disk is off the detector); ``classes`` (N,) base of each
    pattern. Faint reflections cost as much to fit as bright ones and add
    almost nothing (their loss widens the errors by ``1 / sqrt(keep)`` at
    most).
    """
    chosen = np.zeros(information.shape[1], bool)
    for k in range(n_classes):
        total = np.nan_to_num(information[classes == k]).clip(0, None).sum(0)
        if total.sum() <= 0:  # no pattern of this base: keep every reflection
            chosen[:] = True
            continue
        order = np.argsort(-total)
        held = np.cumsum(total[order]) / total.sum()
        chosen[order[: int(np.searchsorted(held, keep)) + 1]] = True
    return chosen


def _shells(hk: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Shell index (J,) of each reflection: equal ``|g|`` in base ``G`` to 2 %."""
    length = np.linalg.norm(hk @ G.T, axis=1)
    return np.unique(np.round(np.log(length) / 0.02).astype(int), return_inverse=True)[1].ravel()


def initialise(data, n_classes: int, n_init: int, seed: int, progress: bool = False) -> dict:
    """Everything the model starts from, measured on pooled data.

    1. The probe: centre and radius from a few patterns; the disk profile
       (mean central disk of the sample, origins refined by a likelihood fit
       of the central disk) and a pseudo-Voigt edge fitted to it.
    2. The lattices: tiles of neighbouring positions (as many as it takes
       for about ``TILE_COUNTS`` scattered electrons per tile, see
       :func:`~stemae.strain.pooled.tile_size`) summed on their central
       beams; disks found in each sum (after removing the ring-median
       background); every sum's lattice indexed against the sum with the
       strongest disks (with an orientation search for other grains); the
       lattice shapes clustered into ``n_classes`` bases.
    3. Per pattern of the sample, a likelihood fit started from its tile's
       lattice: the background's radial shape (pixels outside all disks),
       each reflection's typical strength, the reflections worth fitting
       (those holding ``KEEP_INFORMATION`` of the strain information, see
       :func:`_informative`), and the spread of orientations, which bounds
       the orientation search at prediction.

    Returns
    -------
    dict of ``G`` (K, 2, 2), ``hk``, ``shells``, ``strength`` (K, J),
    ``disks`` (template and voigt tables), ``voigt`` (its parameters),
    ``background``, ``radius``, ``center``, ``max_turn`` and ``spread``
    (radians), ``tile``
    (side in scan positions), ``check`` (:func:`~stemae.strain.pooled.lattice_check`
    of the tile sums).
    """
    Ry, Rx, Qy, Qx = data.shape
    rng = np.random.default_rng(seed)
    probe_idx = rng.choice(Ry * Rx, min(64, Ry * Rx), replace=False)
    first = read_patterns(data, *np.unravel_index(probe_idx, (Ry, Rx)))
    center0, r0 = estimate_probe(first)
    tile = tile_size(first, center0, r0)
    rows, cols = tile_positions((Ry, Rx), tile, max(8, int(np.ceil(n_init / tile**2))), seed)
    T, n = rows.shape
    patterns = read_patterns(data, rows.ravel(), cols.ravel())
    origins = beam_centers(patterns, r0, center0)
    disk, radius = disk_profile(patterns, origins, r0)
    with torch.no_grad():
        origins = fit_central_beam(torch.as_tensor(patterns), torch.as_tensor(origins, dtype=torch.float32),
                                   torch.as_tensor(disk), DISK_DR, radius).double().numpy()
    disk, radius = disk_profile(patterns, origins, radius)
    voigt, voigt_params = fit_pseudo_voigt(disk)

    # Lattices of the tile sums (each summed on its first pattern's beam).
    base_o = origins.reshape(T, n, 2)[:, 0]
    sums = np.stack([aligned_sum(patterns[t * n : (t + 1) * n], origins[t * n : (t + 1) * n], np.round(base_o[t]))
                     for t in range(T)])
    base_o = np.round(base_o)
    clean = np.stack([s - ring_median_background(s, o, radius + 3) for s, o in zip(sums, base_o)])
    disks = find_disks(clean, radius, np.median(base_o, 0), min_relative_intensity=0.02, max_peaks=64)
    # The basis of the tile sum that it explains best, among the five with
    # the strongest disks (a tile astride a grain boundary holds two lattices).
    strongest = np.argsort(-np.sort(disks["intensity"], axis=-1)[..., -8:-1].sum(-1))[:5]
    best = -1.0
    for t in strongest:
        try:
            G_c = disk_basis(disks, int(t), radius)
        except ValueError:
            continue
        score = lattice_check({k: v[t : t + 1] for k, v in disks.items()}, G_c, radius)
        if score["indexed"] + score["sites"] > best:
            best, G0 = score["indexed"] + score["sites"], G_c
    if best < 0:
        raise ValueError("no lattice found in the summed patterns: is there a crystal in the scan?")
    tol = 0.15 * np.linalg.norm(G0, axis=0).min()
    P, Wt, C = disks["positions"], disks["intensity"], disks["central"]
    fit = fit_lattice(P, Wt, C, G0, tol)
    lost = ~fit["ok"] | (fit["fraction"] < 0.6)
    if lost.any():
        start = np.broadcast_to(G0, (T, 2, 2)).copy()
        start[lost] = rotation_matrix(index_search(P[lost], Wt[lost], C[lost], G0, tol)) @ G0
        redo = fit_lattice(P, Wt, C, start, tol)
        for k in fit:
            fit[k][lost] = redo[k][lost]
    good = fit["ok"] & (fit["fraction"] >= 0.6)  # tiles whose disks the lattice explains
    if good.sum() < n_classes:
        raise ValueError("too few tiles could be indexed to find the lattice: is there a crystal in the scan?")
    G_t = align_to_reference(fit["G"][good], G0)
    check = lattice_check({k: v[good] for k, v in disks.items() if k != "radius"}, G_t, radius)
    if not check["ok"]:
        warnings.warn(
            f"indexing doubtful: the lattices explain {check['indexed']:.0%} of the disk intensity in the summed "
            f"tiles and find disks at {check['sites']:.0%} of their sites; the bases may be wrong",
            stacklevel=3,
        )
    Gk, label = _cluster_bases(G_t, n_classes, seed)
    center = np.median(origins, 0)
    hk = _reflection_indices(Gk, center, (Qy, Qx), radius)
    shells = _shells(hk, Gk[0])

    # Per-pattern likelihood fits from each tile's lattice.
    tiles_ok = np.flatnonzero(good)
    sel = np.concatenate([np.arange(t * n, (t + 1) * n) for t in tiles_ok])
    cls = np.repeat(label, n)
    Gstart = np.repeat(G_t, n, 0)
    A0 = Gstart @ np.linalg.inv(Gk[cls])
    x = torch.as_tensor(patterns[sel])
    g = torch.as_tensor((hk @ np.swapaxes(Gk, -1, -2))[cls], dtype=torch.float32)  # (N, J, 2)
    o = torch.as_tensor(origins[sel], dtype=torch.float32)
    with torch.no_grad():
        first_fit = fit_disk_lattice(x, o, torch.as_tensor(A0, dtype=torch.float32), g, torch.as_tensor(disk),
                                     DISK_DR, radius, iterations=4, regather=(1, 2, 3), noise_floor=NOISE_FLOOR)
        centres = (first_fit["origin"][:, None] + g @ first_fit["A"].transpose(-1, -2)).double().numpy()
        background = background_profile(patterns[sel], first_fit["origin"].double().numpy(), centres, radius)
        bg = torch.as_tensor(background)
        second = fit_disk_lattice(x, first_fit["origin"], first_fit["A"], g, torch.as_tensor(disk), DISK_DR, radius,
                                  background=bg, iterations=2, regather=(1,), local_background=False,
                                  noise_floor=NOISE_FLOOR)
        # Each shell's Bragg disks, measured around their fitted centres.
        o2 = second["origin"].double().numpy()
        centres = o2[:, None] + (g @ second["A"].transpose(-1, -2)).double().numpy()
        amps = second["amplitudes"][:, 1:].double().numpy()
        centres[~second["on"][:, 1:].numpy()] = np.nan
        measured = shell_profiles(patterns[sel], o2, centres, amps, background, second["background"].double().numpy(),
                                  shells, radius)
        n_tab = len(disk)
        template, fitted, shell_params = [disk], [voigt], []
        measured = np.pad(measured, ((0, 0), (0, max(0, n_tab - measured.shape[1]))))[:, :n_tab]
        for prof in measured:
            if np.isfinite(prof).all():
                v, par = fit_pseudo_voigt(prof, radius=radius)
            else:
                prof, v, par = disk, voigt, dict(voigt_params)
            template.append(prof)
            fitted.append(v)
            shell_params.append(par)
        tables = dict(template=np.stack(template), voigt=np.stack(fitted))
        rows = torch.as_tensor(shells + 1)
        second = fit_disk_lattice(x, second["origin"], second["A"], g, torch.as_tensor(tables["voigt"]), DISK_DR,
                                  radius, rows=rows, background=bg, iterations=3, regather=(1, 2),
                                  local_background=False, noise_floor=NOISE_FLOOR)
    # The bases again, from every pattern's fitted lattice (tiles straddling
    # phases blur the first estimate).
    G_pat = second["A"].double().numpy() @ Gk[cls]
    if n_classes > 1:
        Gk, cls = _refine_bases(G_pat, Gk)
    kept = _informative(second["disk_information"][:, 1:].double().numpy(), cls, n_classes)
    hk, shells = hk[kept], shells[kept]
    total = np.maximum(patterns[sel].sum((1, 2)), 1.0)
    amp = second["amplitudes"][:, 1:][:, kept].double().numpy() / total[:, None]
    amp = np.where(second["on"][:, 1:][:, kept].numpy(), amp, np.nan)
    strength = np.zeros((n_classes, len(hk)))
    for k in range(n_classes):
        seen = np.isfinite(amp[cls == k]).any(0)
        if seen.any():
            strength[k, seen] = np.nanmedian(amp[cls == k][:, seen], axis=0).clip(0, None)
    # Orientation spread of the sample, relative to each base, modulo the lattice symmetry.
    G_fit = align_to_reference(G_pat, Gk[cls])
    angle = lambda G: np.arctan2(G[:, 1, 0], G[:, 0, 0])  # noqa: E731
    turn = np.abs(np.remainder(angle(G_fit) - angle(Gk[cls]) + np.pi, 2 * np.pi) - np.pi)
    spread = float(np.percentile(turn, 99)) if len(turn) else np.pi
    max_turn = np.pi if spread > SEARCH_TURN else spread + TURN_MARGIN
    return dict(G=Gk, hk=hk, shells=shells, strength=strength, disks=tables,
                voigt=dict(central=voigt_params, shells=shell_params), background=background, radius=radius,
                center=center, max_turn=max_turn, spread=spread, tile=int(tile), check=check)


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
    profile: str = "voigt",
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
    n_init : patterns (in tiles of neighbours) the bases, disk and background
        shapes are measured on (see :func:`initialise`)
    batch_size, lr : optimiser settings (Adam)
    reg : weight of the penalty on stretch and shear of ``A``
    profile : disk profiles for the fits, ``"voigt"`` (pseudo-Voigt edges
        fitted to the measured central disk and to each shell's pooled Bragg
        disks: smooth, so the Fisher information is right) or ``"template"``
        (those measurements themselves)
    seed : makes the whole fit deterministic
    device : ``"cpu"`` or ``"cuda"``
    progress : show progress bars

    Returns
    -------
    model : CCSTAE
    record : dict with the per-epoch ``loss``, the settings used, the
        indexing check of the pooled lattice and the pseudo-Voigt parameters
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    init = initialise(data, n_classes, n_init, seed, progress)
    model = CCSTAE(init["G"], init["hk"], init["shells"], init["strength"], init["disks"], init["background"],
                   init["radius"], init["center"], data.shape[2:], profile=profile, max_turn=init["max_turn"],
                   spread=init["spread"]).to(device)
    Ry, Rx = data.shape[:2]
    idx = np.sort(rng.choice(Ry * Rx, min(n_train, Ry * Rx), replace=False))
    r, c = np.unravel_index(idx, (Ry, Rx))
    train = torch.as_tensor(read_patterns(data, r, c)).to(device)
    opt = torch.optim.Adam([p for p in model.parameters()], lr=lr)
    losses = []
    bar = tqdm(range(epochs), desc="ccstae epochs", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.as_tensor(rng.permutation(len(train)), device=device)
        total = 0.0
        for start in range(0, len(train), batch_size):
            x = train[perm[start : start + batch_size]]
            logits, A_enc, origin, params = model(x)
            with torch.no_grad():
                beam = fit_central_beam(x, origin.mean(1), model.disk(), DISK_DR, model.radius, iterations=2)
            seeded = [model.seed_rotation(x, A_enc[:, k], beam, k, smallest=True) for k in range(model.K)]
            A = torch.stack([a for a, _ in seeded], 1)
            fwd, inv = model.cycle_losses(x, A, origin)
            # The encoder learns the orientation search's turn and the central
            # beam's position too (without this its own rotation would drift,
            # the turn making up for it, and descan would be learnt slowly).
            turned = torch.stack([t for _, t in seeded], 1) ** 2 / 0.01**2
            shifted = ((origin - beam[:, None]) ** 2).sum(-1)
            per_class = fwd + inv + reg * ((params[..., :3] ** 2).sum(-1) / 0.05**2 + turned) + 0.1 * shifted
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
                  reg=reg, seed=seed, n_classes=n_classes, profile=profile, tile=init["tile"],
                  indexing=init["check"], voigt=init["voigt"], max_turn_deg=math.degrees(init["max_turn"]))
    return model, record


OUTPUTS = {"G": (2, 2), "cov": (4, 4), "origin": (2,), "phase": (), "probabilities": None, "chi2": (),
           "n_disks": (), "disk_intensity": None, "background": ()}


@torch.no_grad()
def _predict_batch(model: CCSTAE, x: torch.Tensor, iterations: int, area: torch.Tensor,
                   base: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """:func:`predict`'s work on patterns ``x`` (B, Qy, Qx); ``base`` (B,)
    forces the base the fits start from. Returns its outputs, one row per pattern."""
    device = x.device
    disk = model.disk()
    logits, _, origin, _ = model(x)
    k = logits.argmax(-1)
    b = torch.arange(len(x), device=device)
    o0 = fit_central_beam(x, origin[b, k], disk, DISK_DR, model.radius, iterations=2)
    # The fit starts from the base whose disks sit best on the pattern
    # (least misfit); where the fitted lattice lies nearer another base, a
    # fit from that base instead (a start a few per cent off converges only
    # partly).
    if base is not None:
        k = base
    elif model.K > 1:
        misfit = [model.fit_patterns(x, torch.full_like(k, kk), o0, 1, evaluate_only=True)["misfit"]
                  for kk in range(model.K)]
        k = torch.stack(misfit, 1).argmin(1)
    fit_ = model.fit_patterns(x, k, o0, iterations)
    G = fit_["A"] @ model.G[k]
    near = model.distortion(G).argmin(-1)
    redo = torch.nonzero(near != k)[:, 0]
    if len(redo):
        again = model.fit_patterns(x[redo], near[redo], o0[redo], iterations)
        for key, v in again.items():
            fit_[key][redo] = v
        k[redo] = near[redo]
        G = fit_["A"] @ model.G[k]
    distortion = model.distortion(G)
    # Covariance of G = A G_k (row-major): each row of A times G_k.
    info = fit_["information"].double()
    info = info + 1e-9 * torch.diagonal(info, dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(
        6, dtype=info.dtype, device=device)
    cov_A = torch.linalg.inv(info)[:, 2:, 2:]
    Kt = torch.zeros(len(x), 4, 4, dtype=cov_A.dtype, device=device)
    Gt = model.G[k].transpose(-1, -2).double()
    Kt[:, :2, :2] = Gt
    Kt[:, 2:, 2:] = Gt
    on = fit_["on"][:, 1:]
    out = dict(G=G, cov=Kt @ cov_A @ Kt.transpose(-1, -2), origin=fit_["origin"], phase=distortion.argmin(-1),
               probabilities=torch.softmax(-0.5 * (distortion / CLASS_SCALE) ** 2, -1),
               chi2=fit_["chi2"] / fit_["dof"].clamp_min(1), n_disks=on.sum(1),
               disk_intensity=torch.where(on, fit_["amplitudes"][:, 1:] * area, torch.nan),
               background=fit_["background"])
    return {key: v.cpu().numpy() for key, v in out.items()}


def isolated_phases(phase: np.ndarray, min_votes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Positions whose class most of their eight neighbours (at least
    ``min_votes`` of them) do not share, agreeing on another instead:
    ``(rows, cols)`` and that class (N,). ``phase`` (Ry, Rx) int."""
    Ry, Rx = phase.shape
    K = int(phase.max()) + 1
    padded = np.pad(phase, 1, constant_values=-1)
    votes = np.zeros((Ry, Rx, K), int)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = padded[1 + dy : 1 + dy + Ry, 1 + dx : 1 + dx + Rx]
                for k in range(K):
                    votes[..., k] += nb == k
    major = votes.argmax(-1)
    flip = (major != phase) & (votes.max(-1) >= min_votes)
    r, c = np.nonzero(flip)
    return np.stack([r, c]), major[r, c]


class PredictStep:
    """The CC-ST-AE's per-batch step (see :mod:`stemae.runner`): a trained
    model maps patterns ``(B, Qy, Qx)`` to :data:`OUTPUTS` (one row per
    pattern, :func:`_predict_batch` over sub-batches of ``batch_size``) and
    the diagnostics' per-batch part
    (:func:`~stemae.strain.diagnostics.batch_statistics`)."""

    signal_ndim = 2

    def __init__(self, model: CCSTAE, *, iterations: int = 4, batch_size: int = 256, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.iterations, self.batch_size, self.device = iterations, batch_size, device
        disk = model.disk()
        r_tab = torch.arange(disk.shape[-1], dtype=torch.float64, device=disk.device) * DISK_DR
        self.area = ((2 * math.pi * r_tab * disk.double()).sum(-1) * DISK_DR)[model.rows()].float()  # (J,) px

    def results(self) -> dict:
        shapes = dict(OUTPUTS, probabilities=(self.model.K,), disk_intensity=(self.model.hk.shape[0],))
        dtypes = {"phase": "i8", "n_disks": "i8"}
        return {**{k: (s, dtypes.get(k, "f8" if k == "cov" else "f4"), "nav") for k, s in shapes.items()},
                **statistics_results(self.model.pattern_shape)}

    def __call__(self, patterns: np.ndarray) -> dict[str, np.ndarray]:
        if tuple(patterns.shape[1:]) != self.model.pattern_shape:
            raise InputError(f"patterns are {patterns.shape[1]}x{patterns.shape[2]} but the model was trained on "
                             f"{self.model.pattern_shape[0]}x{self.model.pattern_shape[1]}")
        x = torch.as_tensor(np.require(patterns, np.float32, ["W"]), device=self.device)
        parts = [_predict_batch(self.model, x[i : i + self.batch_size], self.iterations, self.area)
                 for i in range(0, len(x), self.batch_size)]
        out = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}
        return {**out, **batch_statistics(patterns, out["origin"], self.model.radius)}


def predict(model: CCSTAE, data, *, batch_size: int = 256, iterations: int = 4, device: str = "cpu",
            progress: bool = False, store=None, fingerprint: dict | None = None, client=None,
            rows: int | None = None) -> dict[str, np.ndarray]:
    """Transforms, classes, lattices and their uncertainties for every pattern.

    Per batch (:class:`PredictStep`, mapped by :func:`stemae.runner.run`,
    in process or on a Dask ``client``, resumable with a ``store``): the
    central beam, then a likelihood fit
    (:func:`~stemae.nn.lattice.fit_disk_lattice`, windows gathered again
    in the first steps, so a start a few pixels off converges) from the
    base that fits best, or for a sample of many orientations from the
    base turned by the orientation search. Then, over the whole map: with
    several bases, a position whose class most of its neighbours do not
    share (five or more of its eight agreeing on another) is fitted again
    from their base, and the new fit is kept where it ends nearest that base
    (at a few electrons per disk a fit started from the wrong phase can stay
    near it); twice, as a corrected position can leave a neighbour isolated.

    Returns
    -------
    dict with ``G`` (Ry, Rx, 2, 2) local reciprocal bases in pixels,
    ``cov`` (Ry, Rx, 4, 4) their covariance (inverse Fisher information;
    row-major entries), ``origin`` (Ry, Rx, 2), ``phase`` (Ry, Rx) class
    index, ``probabilities`` (Ry, Rx, K), ``chi2`` (Ry, Rx) Pearson
    chi-square per degree of freedom (about 1 where the model fits),
    ``n_disks`` (Ry, Rx) Bragg disks fitted, ``disk_intensity`` (Ry, Rx, J)
    each reflection's integrated counts (``model.hk`` order; NaN where its
    disk is off the detector), ``background`` (Ry, Rx) the diffuse
    background's scale (counts per pixel where its shape is 1), and the
    diagnostics ``virtual_bf``, ``virtual_df`` (Ry, Rx), ``mean_pattern``
    and ``max_pattern`` (Qy, Qx).
    """
    Ry, Rx, Qy, Qx = data.shape
    if (Qy, Qx) != model.pattern_shape:
        raise InputError(f"patterns are {Qy}x{Qx} but the model was trained on "
                         f"{model.pattern_shape[0]}x{model.pattern_shape[1]}")
    step = PredictStep(model, iterations=iterations, batch_size=batch_size, device=device)
    # Blocks of at least one whole batch (a GPU wants large batches).
    rows = rows or max(rows_for_budget(data.shape, 32 * 2**20), -(-batch_size // Rx))
    pred = finish_statistics(run(step, data, store=store, fingerprint=fingerprint, client=client, rows=rows,
                                 progress=progress, desc="ccstae predict"))
    tried = np.zeros((Ry, Rx), bool)
    with torch.no_grad():
        for _ in range(PHASE_ROUNDS if model.K > 1 else 0):
            (r, c), major = isolated_phases(pred["phase"])
            fresh = ~tried[r, c]
            r, c, major = r[fresh], c[fresh], major[fresh]
            tried[r, c] = True
            for i in range(0, len(r), batch_size):
                sl = slice(i, i + batch_size)
                x = torch.as_tensor(read_patterns(data, r[sl], c[sl]), device=device)
                again = _predict_batch(step.model, x, iterations, step.area,
                                       base=torch.as_tensor(major[sl], device=device))
                keep = again["phase"] == major[sl]
                for key, v in again.items():
                    pred[key][r[sl][keep], c[sl][keep]] = v[keep]
    return pred


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


def map_strain(pred: dict, reference=None, max_chi2: float | None = None, reference_phase: int | None = None,
               frame: np.ndarray | None = None, per_phase: bool = False) -> dict:
    """Strain maps and their uncertainties from :func:`predict` output,
    relative to a reference region (``reference_phase``: only that
    phase's positions in it; ``per_phase``: each phase against its own
    positions in it, or over the whole scan where it has none there), in
    the axes of ``frame`` (:func:`~stemae.geometry.frame_matrix`; detector
    axes by default).

    The local bases are relabelled to the lattice-equivalent basis closest to
    the reference's, so symmetry-equivalent transforms give one answer.
    Positions with fewer than three disks on the detector, or a chi-square
    per degree of freedom above ``max_chi2``, are invalid. With
    ``per_phase``, ``phase_references`` lists each phase's reference basis
    (detector px) and its strain against the first phase's (the mismatch,
    in the axes of ``frame`` like the maps).
    """
    G0 = pred["G"].astype(np.float64)
    region = reference_mask(G0.shape[:2], reference)
    ok = np.isfinite(G0).all(axis=(-1, -2))
    valid = ok & (pred["n_disks"] >= 3) & np.isfinite(pred["cov"]).all(axis=(-1, -2))
    if max_chi2 is not None:
        valid &= pred["chi2"] <= max_chi2
    if per_phase:
        groups = [(k, pred["phase"] == k) for k in np.unique(pred["phase"])]
    else:
        groups = [(reference_phase, np.ones(G0.shape[:2], bool))]
    maps, G, mask, refs = {}, np.full_like(G0, np.nan), np.zeros(G0.shape[:2], bool), []
    for k, members in groups:
        m = region if k is None else region & (pred["phase"] == k)
        if per_phase and not (m & valid).any():
            m = (pred["phase"] == k)
        if not (m & ok).any():
            raise ValueError(f"no position of phase {k} lies in the reference region")
        Gk = align_to_reference(G0, np.median(G0[m & ok], axis=0))
        covk = relabel_covariance(pred["cov"].astype(np.float64), G0, Gk)
        mk, G_ref = strain_maps(Gk, m, valid, cov=covk, frame=frame)
        for name, v in mk.items():
            maps.setdefault(name, np.full(v.shape, np.nan, np.float32))[members] = v[members]
        G[members] = Gk[members]
        mask |= m
        refs.append((k, G_ref))
    out = dict(maps)
    if per_phase:
        # The mismatch in the maps' axes (distortion removed, frame turned),
        # like the maps themselves; the bases stay in detector pixels.
        M = np.eye(2) if frame is None else frame
        G_first = M @ refs[0][1]
        out["phase_references"] = [
            {"phase": int(k), "basis_px": G_ref.tolist(),
             "mismatch": {n: float(v) for n, v in strain_from_deformation(
                 deformation_from_reciprocal(M @ G_ref, G_first)).items()}} for k, G_ref in refs]
    out.update(reference=mask, valid=valid, g1=G[..., :, 0].astype(np.float32),
               g2=G[..., :, 1].astype(np.float32), origin=pred["origin"].astype(np.float32), g_ref=refs[0][1],
               phase=pred["phase"], probabilities=pred["probabilities"].astype(np.float32),
               chi2=pred["chi2"].astype(np.float32), n_disks=pred["n_disks"].astype(np.int16),
               disk_intensity=pred["disk_intensity"].astype(np.float32),
               background=pred["background"].astype(np.float32), **{k: pred[k] for k in DIAGNOSTICS if k in pred})
    return out
