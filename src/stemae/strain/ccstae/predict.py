"""The CC-ST-AE's per-batch step, prediction over a scan and strain from it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage

from stemae.data.blocks import read_patterns, rows_for_budget
from stemae.errors import InputError
from stemae.geometry import (
    deformation_from_reciprocal,
    reference_mask,
    strain_from_deformation,
    strain_maps,
)
from stemae.runner import run
from stemae.strain.ccstae.likelihood import CENTROID_RING, centroid_offsets, fit_central_beam, fit_disk_lattice
from stemae.strain.ccstae.model import CCSTAE, CLASS_SCALE
from stemae.strain.diagnostics import (
    DIAGNOSTICS,
    batch_statistics,
    finish_statistics,
    statistics_results,
)
from stemae.strain.lattice import align_to_reference, relabel_covariance
from stemae.strain.profiles import DISK_DR

OUTPUTS = {"G": (2, 2), "cov": (4, 4), "origin": (2,), "phase": (), "probabilities": None, "chi2": (),
           "n_disks": (), "disk_intensity": None, "background": ()}
PHASE_ROUNDS = 2  # passes of refitting positions whose neighbours hold another phase
COMPILE_ABOVE = 100_000  # patterns from which predict compiles its fits by default (the compile pays off)
COMPILED_CPU_BATCH = 128  # largest sub-batch of the compiled fits on a CPU (fused kernels like cache-sized batches)
POOL = 7  # scan positions per side over which the disks' centroid offsets are pooled
POOL_PROBE = 15  # side of the central block whose centroids decide whether the whole map's are measured
# The block's largest weight that photon noise alone reaches once in a hundred maps (the block holds
# about (15 / 7)^2 independent pools, so chance weights run high; the whole map's are applied as they come)
POOL_MIN_WEIGHT = 0.63


@torch.no_grad()
def _predict_batch(model: CCSTAE, x: torch.Tensor, iterations: int, area: torch.Tensor,
                   base: torch.Tensor | None = None, fit=fit_disk_lattice, encode=None) -> dict[str, np.ndarray]:
    """:func:`predict`'s work on patterns ``x`` (B, Qy, Qx); ``base`` (B,)
    forces the base the fits start from; ``fit`` and ``encode`` are the
    likelihood fit and the model's forward pass (compiled for this batch
    size, or not; default ``model``). Returns its outputs, one row per
    pattern."""
    encode = model if encode is None else encode
    device = x.device
    logits, _, origin, _ = encode(x)
    k = logits.argmax(-1)
    o0 = fit_central_beam(x, origin[torch.arange(len(x), device=device), k], model.disk(), DISK_DR, model.radius,
                          iterations=2, fit=fit)
    # The fit goes on from the base whose disks sit best on the pattern
    # (unless ``base`` says which); where the fitted lattice lies nearer
    # another base, a fit from that base instead (a start a few per cent off
    # converges only partly).
    fit_ = model.fit_patterns(x, base, o0, iterations, fit=fit)
    k = fit_["base"]
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
    inverse, singular = torch.linalg.inv_ex(info)  # singular: a blank pattern carries no information
    cov_A = torch.where(singular[:, None, None] != 0, torch.nan, inverse)[:, 2:, 2:]
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


def _box_sum(a: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``a`` (Ry, Rx, ...) over ``size`` x ``size`` scan positions
    around each (zero beyond the map), summed directly: exactly zero where
    every term is (a running box filter leaves rounding residue there,
    which a sum of weights would take for a neighbour)."""
    ones = np.ones(size)
    return ndimage.correlate1d(ndimage.correlate1d(a, ones, axis=0, mode="constant"), ones, axis=1, mode="constant")


def pooled_centroid_correction(G: np.ndarray, offsets: np.ndarray, variance: np.ndarray, hk: np.ndarray,
                                phase: np.ndarray, valid: np.ndarray,
                                size: int = POOL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattices moved by their disks' centroid offsets, pooled over
    neighbouring positions and applied as far as they stand above their
    noise.

    Where the lattice varies within the probe, a disk's edge and its
    intensity centroid part (the centroid follows the probe-weighted
    lattice), coherently over several scan steps; photon noise does not
    correlate between positions. Per position, a weighted least-squares fit
    of the offsets to ``d_j = d_o + M g_j`` (``g_j = G hk_j``, weights one
    over their variance, at least four disks) gives a correction ``M``
    (2x2) and its variance; ``M`` is averaged over ``size`` x ``size``
    positions of the same phase (inverse-variance weights) and each entry
    applied as ``G <- (I + f M) G``, ``f = max(0, 1 - noise / mean square)``
    over the map (an empirical-Bayes weight: about 1 where the offsets are
    coherent, 0 where they are noise, as at a few hundred counts per disk).

    Parameters
    ----------
    G : (Ry, Rx, 2, 2) fitted bases, px (columns g1, g2)
    offsets : (Ry, Rx, J, 2) centroid minus fitted centre, px (NaN: none)
    variance : (Ry, Rx, J) variance of each offset component, px^2
    hk : (J, 2) reflection indices
    phase, valid : (Ry, Rx) class and whether the fit is usable

    Returns
    -------
    G : (Ry, Rx, 2, 2) corrected bases
    weight : (2, 2) the ``f`` applied to each entry of ``M``
    variance : (Ry, Rx, 2, 2) the correction's own variance in each entry
        of ``G``, px^2 (from the pooled covariance of ``M``'s rows, each
        entry scaled by its ``f``; 0 where nothing is applied)
    """
    G = np.asarray(G, np.float64)
    g = np.einsum("jk,yxik->yxji", np.asarray(hk, np.float64), G)
    w = np.where(np.isfinite(variance) & np.isfinite(offsets).all(-1), 1 / np.where(variance > 0, variance, np.inf), 0)
    A = np.concatenate([np.ones(g.shape[:-1] + (1,)), np.nan_to_num(g)], -1)  # (Ry, Rx, J, 3)
    H = np.einsum("yxjk,yxjl,yxj->yxkl", A, A, w)
    ok = valid & ((w > 0).sum(-1) >= 4) & (np.linalg.cond(H) < 1e12)
    M, V = np.full(G.shape, np.nan), np.full(G.shape, np.nan)
    C = np.zeros(G.shape[:2])  # covariance of a row's two entries (the same for both rows)
    Hi = np.linalg.inv(H[ok])
    coef = np.einsum("nkl,njl,nj,nja->nak", Hi, A[ok], w[ok], np.nan_to_num(offsets[ok]))  # (n, axis, 3)
    M[ok], V[ok], C[ok] = coef[..., 1:], np.diagonal(Hi, axis1=-2, axis2=-1)[:, None, 1:].repeat(2, 1), Hi[:, 1, 2]
    Ms, Vs, Cs = np.full(G.shape, np.nan), np.full(G.shape, np.nan), np.zeros(G.shape[:2])
    for k in np.unique(phase):
        m = (ok & (phase == k))[..., None, None] & np.isfinite(M)
        wk = np.where(m, 1 / np.where(m, V, 1), 0)
        total = _box_sum(wk, size)  # the sum of the weights
        sel = (valid & (phase == k))[..., None, None] & (total > 0)
        Ms[sel] = _box_sum(np.where(m, M * wk, 0), size)[sel] / total[sel]
        Vs[sel] = 1 / total[sel]
        here = sel[..., 0, 0]
        Cs[here] = _box_sum(wk[..., 0, 0] * wk[..., 0, 1] * C, size)[here] / (total[..., 0, 0] * total[..., 0, 1])[here]
    has = np.isfinite(Ms).all(axis=(-1, -2))
    if not has.any():
        return G, np.zeros((2, 2)), np.zeros(G.shape)
    weight = np.clip(1 - Vs[has].mean(0) / np.maximum((Ms[has] ** 2).mean(0), 1e-300), 0, 1)
    out = G.copy()
    out[has] = (np.eye(2) + weight * Ms[has]) @ G[has]
    added = np.zeros(G.shape)  # var of sum_b f_ab M_ab G_bc
    added[has] = np.einsum("ab,nab,nbc->nac", weight**2, Vs[has], G[has] ** 2) + 2 * np.einsum(
        "a,n,nc->nac", weight[:, 0] * weight[:, 1], Cs[has], G[has][:, 0] * G[has][:, 1])
    return out, weight, added


class PredictStep:
    """The CC-ST-AE's per-batch step (see :mod:`stemae.runner`): a trained
    model maps patterns ``(B, Qy, Qx)`` to :data:`OUTPUTS` (one row per
    pattern, :func:`_predict_batch` over sub-batches of ``batch_size``) and
    the diagnostics' per-batch part
    (:func:`~stemae.strain.diagnostics.batch_statistics`).

    ``compile``: the likelihood fits and the encoder run through
    ``torch.compile`` (fused kernels, about twice the rate on a CPU, the
    same results to float32 rounding), compiled once per process on the
    first call (about a minute on 2 cores, less with PyTorch's compile
    cache), for sub-batches of exactly ``batch_size`` (the last one is
    padded; on a CPU at most :data:`COMPILED_CPU_BATCH`, about 1.15x faster
    than 256). Where PyTorch cannot compile (no C++ compiler), a warning
    says so and the step runs as it is.
    """

    signal_ndim = 2

    def __init__(self, model: CCSTAE, *, iterations: int = 4, batch_size: int = 256, device: str = "cpu",
                 compile: bool = False):
        self.model = model.to(device).eval()
        if compile and device == "cpu":
            batch_size = min(batch_size, COMPILED_CPU_BATCH)
        self.iterations, self.batch_size, self.device, self.compile = iterations, batch_size, device, compile
        self._compiled = None
        disk = model.disk()
        r_tab = torch.arange(disk.shape[-1], dtype=torch.float64, device=disk.device) * DISK_DR
        self.area = ((2 * math.pi * r_tab * disk.double()).sum(-1) * DISK_DR)[model.rows()].float()  # (J,) px

    def __getstate__(self):  # a compiled function stays in its process
        return {**self.__dict__, "_compiled": None}

    def results(self) -> dict:
        shapes = dict(OUTPUTS, probabilities=(self.model.K,), disk_intensity=(self.model.hk.shape[0],))
        dtypes = {"phase": "i8", "n_disks": "i8"}
        return {**{k: (s, dtypes.get(k, "f8" if k == "cov" else "f4"), "nav") for k, s in shapes.items()},
                **statistics_results(self.model.pattern_shape)}

    def _batch(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """:func:`_predict_batch` of one sub-batch, through the compiled fit
        (padded to ``batch_size`` with copies of its last pattern) when
        ``compile`` is on."""
        if not self.compile:
            return _predict_batch(self.model, x, self.iterations, self.area)
        n = len(x)
        if n < self.batch_size:
            x = torch.cat([x, x[-1:].expand(self.batch_size - n, -1, -1)])
        if self._compiled is None:
            self._compiled = dict(fit=torch.compile(fit_disk_lattice, dynamic=False),
                                  encode=torch.compile(self.model, dynamic=False))
        try:
            with warnings.catch_warnings():  # PyTorch's own deprecations while compiling are not the user's
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
                out = _predict_batch(self.model, x, self.iterations, self.area, **self._compiled)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            warnings.warn(f"torch.compile is not available here ({str(e).splitlines()[0][:200]}); "
                          "predicting without it", RuntimeWarning, stacklevel=2)
            self.compile, self._compiled = False, None
            out = _predict_batch(self.model, x, self.iterations, self.area)
        return {k: v[:n] for k, v in out.items()}

    def __call__(self, patterns: np.ndarray) -> dict[str, np.ndarray]:
        if tuple(patterns.shape[1:]) != self.model.pattern_shape:
            raise InputError(f"patterns are {patterns.shape[1]}x{patterns.shape[2]} but the model was trained on "
                             f"{self.model.pattern_shape[0]}x{self.model.pattern_shape[1]}")
        x = torch.as_tensor(np.require(patterns, np.float32, ["W"]), device=self.device)
        parts = [self._batch(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        out = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}
        return {**out, **batch_statistics(patterns, out["origin"], self.model.radius)}


def predict(model: CCSTAE, data, *, batch_size: int = 256, iterations: int = 4, device: str = "cpu",
            progress: bool = False, store=None, fingerprint: dict | None = None, client=None,
            rows: int | None = None, compile: bool | None = None, pool: bool = True) -> dict[str, np.ndarray]:
    """Transforms, classes, lattices and their uncertainties for every pattern.

    Per batch (:class:`PredictStep`, mapped by :func:`stemae.runner.run`,
    in process or on a Dask ``client``, resumable with a ``store``): the
    central beam, then a likelihood fit
    (:func:`~stemae.strain.ccstae.likelihood.fit_disk_lattice`, windows gathered again
    in the first steps, so a start a few pixels off converges) started
    from every base (for a sample of many orientations, every base turned
    by the orientation search) and going on from the one that fits best.
    Then, over the whole map: with several bases, a position whose class
    most of its neighbours do not share (five or more of its eight agreeing
    on another) is fitted again from their base, and the new fit is kept
    where it ends nearest that base (at a few electrons per disk a fit
    started from the wrong phase can stay near it); twice, as a corrected
    position can leave a neighbour isolated. Last, the lattices move by
    their disks' centroid offsets pooled over :data:`POOL` x :data:`POOL`
    positions, as far as those stand above their noise
    (:func:`pooled_centroid_correction`; the per-batch step alone, as the
    server and live maps run it, stops before; so does ``pool=False``).
    ``compile`` (see :class:`PredictStep`; default: from
    :data:`COMPILE_ABOVE` patterns on, where it saves more than it costs).

    Returns
    -------
    dict with ``G`` (Ry, Rx, 2, 2) local reciprocal bases in pixels,
    ``cov`` (Ry, Rx, 4, 4) their covariance (inverse Fisher information,
    plus the centroid correction's own variance on the diagonal where it
    is applied; row-major entries), ``origin`` (Ry, Rx, 2), ``phase`` (Ry, Rx) class
    index, ``probabilities`` (Ry, Rx, K), ``chi2`` (Ry, Rx) Pearson
    chi-square per degree of freedom (about 1 where the model fits),
    ``n_disks`` (Ry, Rx) Bragg disks fitted, ``disk_intensity`` (Ry, Rx, J)
    each reflection's integrated counts (``model.hk`` order; NaN where its
    disk is off the detector), ``background`` (Ry, Rx) the diffuse
    background's scale (counts per pixel where its shape is 1),
    ``centroid_weight`` (2, 2) the weight :func:`pooled_centroid_correction`
    applied (zeros where the sample block showed nothing to correct or
    with ``pool=False``), and
    the diagnostics ``virtual_bf``, ``virtual_df`` (Ry, Rx),
    ``mean_pattern`` and ``max_pattern`` (Qy, Qx).
    """
    Ry, Rx, Qy, Qx = data.shape
    if (Qy, Qx) != model.pattern_shape:
        raise InputError(f"patterns are {Qy}x{Qx} but the model was trained on "
                         f"{model.pattern_shape[0]}x{model.pattern_shape[1]}")
    if compile is None:
        compile = Ry * Rx >= COMPILE_ABOVE
    step = PredictStep(model, iterations=iterations, batch_size=batch_size, device=device, compile=compile)
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
    if not pool:
        pred["centroid_weight"] = np.zeros((2, 2))
        return pred
    G, pred["centroid_weight"], added = _centroid_pass(model, data, pred, batch_size, device)
    pred["G"] = G.astype(pred["G"].dtype)
    entry = np.arange(4)  # cov's order: G's entries row by row
    pred["cov"][..., entry, entry] += added.reshape(added.shape[:2] + (4,)).astype(pred["cov"].dtype)
    return pred


def _centroid_pass(model: CCSTAE, data, pred: dict, batch_size: int,
                   device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pooled_centroid_correction` of ``pred``'s lattices, the disks'
    centroids measured on a central block of :data:`POOL_PROBE` positions
    first and over the whole scan only where that block gives a weight of
    at least :data:`POOL_MIN_WEIGHT`, more than photon noise alone gives
    it (at a few hundred counts per disk, or with rigid disks, the whole
    map's weight comes out about 0 and the pass is not worth its time).
    Returns the bases (Ry, Rx, 2, 2), the weight (2, 2) and the
    correction's variance in each entry of the bases (Ry, Rx, 2, 2)."""
    Ry, Rx = pred["G"].shape[:2]
    hk = model.hk.cpu().numpy()
    radius = model.radius
    valid = np.isfinite(pred["G"]).all(axis=(-1, -2)) & (pred["n_disks"] >= 3)

    offsets = np.full((Ry, Rx, len(hk), 2), np.nan)
    variance = np.full((Ry, Rx, len(hk)), np.nan)
    hk_t = torch.as_tensor(hk, dtype=torch.float64, device=device)

    def measure(where: np.ndarray):
        """Fill ``offsets`` and ``variance`` at the positions ``where`` (Ry, Rx) bool."""
        r, c = np.nonzero(where)
        for i in range(0, len(r), batch_size):
            rs, cs = r[i : i + batch_size], c[i : i + batch_size]
            G = torch.as_tensor(pred["G"][rs, cs], dtype=torch.float64, device=device)
            g = hk_t @ G.transpose(-1, -2)  # (B, J, 2)
            centres = torch.as_tensor(pred["origin"][rs, cs], dtype=G.dtype, device=device)[:, None] + g
            x = torch.as_tensor(read_patterns(data, rs, cs), dtype=G.dtype, device=device)
            d, v = centroid_offsets(x, centres, radius)
            apart = (g.norm(dim=-1).amin(-1) > 2 * radius + CENTROID_RING[1]).cpu().numpy()  # no neighbour in a ring
            offsets[rs[apart], cs[apart]], variance[rs[apart], cs[apart]] = d.cpu().numpy()[apart], v.cpu().numpy()[apart]

    n = POOL_PROBE
    block = (slice(max(0, (Ry - n) // 2), max(0, (Ry - n) // 2) + min(n, Ry)),
             slice(max(0, (Rx - n) // 2), max(0, (Rx - n) // 2) + min(n, Rx)))
    in_block = np.zeros((Ry, Rx), bool)
    in_block[block] = True
    measure(in_block)
    _, weight, _ = pooled_centroid_correction(pred["G"][block], offsets[block], variance[block], hk,
                                              pred["phase"][block], valid[block])
    if weight.max() < POOL_MIN_WEIGHT:
        return np.asarray(pred["G"], np.float64), np.zeros((2, 2)), np.zeros(pred["G"].shape)
    measure(~in_block)
    return pooled_centroid_correction(pred["G"], offsets, variance, hk, pred["phase"], valid)


def to_strain(pred: dict, reference=None, max_chi2: float | None = None, reference_phase: int | None = None,
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
