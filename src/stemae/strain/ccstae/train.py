"""Training the CC-ST-AE on a datacube (:func:`fit`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from stemae.data.blocks import read_patterns
from stemae.strain.ccstae.init import initialise, refine_bases
from stemae.strain.ccstae.likelihood import fit_central_beam
from stemae.strain.ccstae.model import CCSTAE, CLASS_SCALE, PROFILES, SEARCH_TURN, stretch
from stemae.strain.ccstae.predict import predict
from stemae.strain.profiles import DISK_DR

SETTLE_ROUNDS = 4  # most rounds of :func:`settle_bases`
SETTLE_TOL = 5e-4  # ... which stop once no base entry moves by more than this fraction of the base's size


def settle_bases(model: CCSTAE, sample: np.ndarray, *, device: str = "cpu", rounds: int = SETTLE_ROUNDS,
                 tol: float = SETTLE_TOL) -> list[float]:
    """Set the model's bases where its own prediction puts the patterns of
    ``sample`` (Ry, Rx, Qy, Qx; neighbouring positions, so that isolated
    phases are fitted again as :func:`~stemae.strain.ccstae.predict.predict`
    does).

    At a few electrons per disk a per-pattern fit converges only part of the
    way from its start, the base, so every lattice measured inherits part of
    the base's error, and strain against a reference of another phase with
    it. Each round predicts the sample (without the pooled centroid
    correction, whose few 1e-4 lie below ``tol``) and sets every base to
    its members' median stretch (and, for a sample of one orientation, mean
    rotation, :func:`~stemae.strain.ccstae.init.refine_bases`), until no
    entry of a base moves by more than ``tol`` of its size, at most
    ``rounds`` times.
    Returns each round's largest relative move.
    """
    moves = []
    for _ in range(rounds):
        pred = predict(model, sample, device=device, compile=False, pool=False)
        G = pred["G"].reshape(-1, 2, 2).astype(np.float64)
        old = model.G.detach().cpu().double().numpy()
        new, _ = refine_bases(G[np.isfinite(G).all((1, 2))], old, rotate=model.max_turn <= SEARCH_TURN)
        with torch.no_grad():
            model.G.copy_(torch.as_tensor(new, dtype=model.G.dtype))
        moves.append(float((np.abs(new - old).max((1, 2)) / np.linalg.norm(old, axis=(1, 2))).max()))
        if moves[-1] < tol:
            break
    return moves


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
        indexing check of the pooled lattice, the pseudo-Voigt parameters
        and ``base_moves``, each round of :func:`settle_bases` (after the
        epochs)
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
    moves = settle_bases(model, init["sample"], device=device)
    record = dict(loss=losses, epochs=epochs, n_train=len(train), n_init=n_init, batch_size=batch_size, lr=lr,
                  reg=reg, seed=seed, n_classes=n_classes, profile=profile, tile=init["tile"],
                  indexing=init["check"], voigt=init["voigt"], max_turn_deg=math.degrees(init["max_turn"]),
                  base_moves=moves)
    return model, record
