"""Domain maps of an image or a series: windows, autoencoder, segmentation,
statistics; and the files a run writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from stemae.data.results import atomic_path, write_results
from stemae.domains import model as ae
from stemae.domains.lockin import BANK_TURNS, amplitude_map, banked_lock_in, relative_contrast
from stemae.domains.segment import (LOCAL_REACH, REFERENCE_GUARD, assign_by_local_share, assign_types, assign_walls,
                                    boundary_mask, circular_mean, domain_statistics, drop_empty_types,
                                    refine_boundaries, segment, unreferenced, wall_pairs, weak_centres)
from stemae.domains.windows import (check_windowing, choose_window, half_window_power, lines_are_not_stripes,
                                    order_null, pooled_order, window_centres, window_ffts, window_stripes)
from stemae.conventions import DOMAIN_ARRAYS
from stemae.errors import InputError
from stemae.runner import run

#: Windows drawn (evenly from the frames, seeded) to train on.
N_TRAIN = 20000
#: Direction sectors (over 180 degrees) of the half-size windows at boundaries between types.
SECTORS = 36
#: Boundaries are refined with half-size windows only if those are at least
#: this big (px): smaller ones hold too little of a stripe wave.
MIN_HALF_WINDOW = 32
#: Windows whose stripe order (relative to noise-only windows) is at or below this are domain-free.
ORDER_THRESHOLD = 1.0

def map_domains(
    images,
    *,
    window: int | None = None,
    stride: int | None = None,
    crop: int | None = None,
    init: ae.DomainAE | None = None,
    init_window: int | None = None,
    n_clusters: int | None = None,
    epochs: int = 20,
    latent: int = 8,
    l1: float = 1e-3,
    l1_start: int = 3,
    l1_ramp: int = 5,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    client=None,
    types=None,
) -> tuple[dict[str, np.ndarray], dict, ae.DomainAE]:
    """Domain maps of a series of images.

    Parameters
    ----------
    images : (T, H, W) or (H, W) array
    window, stride : window side and step in pixels (defaults: the window of
        ``init``, or one sized from the stripe periods the images show and how
        faint their stripes are (:func:`~stemae.domains.windows.choose_window`);
        ``window // 4``)
    crop : side of the spectra's central crop (odd; at most the window's side
        - 1; default: the ``init`` model's, or what the shortest period needs,
        at least 33)
    init : a trained model to start from; ``epochs=0`` only applies it
    init_window : the window ``init`` was trained with (its default window)
    n_clusters : number of domain types; ``None`` chooses it
    epochs, latent, l1, l1_start, l1_ramp : training, see :func:`stemae.domains.model.fit`
    seed, device, progress : determinism, torch device, progress bars
    client : a ``dask.distributed.Client`` to map the frames on (one task per frame)
    types : the stripe types' wall angles (degrees, e.g. a bundle's
        ``type_angles``): every window is labelled per frame against them
        (the same types, numbered alike, on any data) instead of finding
        the types from all windows; ``n_clusters`` is then ignored

    Returns
    -------
    maps : dict of arrays: ``centres`` (ny, nx, 2) window centres (y, x) px;
        per window (T, ny, nx): ``segmentation`` (domain type), ``order``
        (stripe order over the noise-only threshold: at most 1 is
        domain-free), ``orientation`` (wall angle, degrees) and ``period``
        (px) of the fundamental stripe wave, ``stretch``, ``shear``,
        ``error`` of the autoencoder; ``content`` (T, ny, nx, latent); per frame and
        type (T, K): ``fractions``, ``type_orientation`` (degrees),
        ``type_period`` (px); per type over all frames (K,):
        ``series_orientation``, ``series_period``, ``series_order``
    info : dict: ``window``, ``stride``, ``crop``, ``periods`` (the
        fundamental periods the window was sized from, px), ``n_clusters``,
        ``type_angles``, ``order_threshold`` and the training ``record``
    model : the trained DomainAE
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    periods = []
    if init is not None:
        window, crop = window or init_window, init.crop
    if window is None or crop is None:
        auto_window, auto_crop, periods = choose_window(images)
        window = window or auto_window
        crop = crop or (auto_crop if window == auto_window else 33)
    crop = min(crop, (window - 2) // 2 * 2 + 1)
    stride = max(window // 4, 1) if stride is None else stride
    # Spectra are made frame by frame (twice: for the training sample, then
    # for the maps), so a long series of large images never holds them all.
    check_windowing(images.shape[1:], window, stride, crop)
    if init is not None and epochs == 0:
        model, record = init, {"loss": [], "epochs": 0, "transfer": True}
    else:
        rng = np.random.default_rng(seed)
        per_frame = -(-N_TRAIN // len(images))
        sample = []
        for frame in tqdm(images, desc="domains sample", unit="frame", disable=not progress, leave=False):
            spectra = window_ffts(frame, window, stride, crop, device)[0].reshape(-1, crop, crop)
            sample.append(spectra[np.sort(rng.choice(len(spectra), min(per_frame, len(spectra)), replace=False))])
        model, record = ae.fit(np.concatenate(sample), latent=latent, epochs=epochs, n_train=N_TRAIN,
                               l1=l1, l1_start=l1_start, l1_ramp=l1_ramp, init=init, seed=seed, device=device,
                               progress=progress)
    maps = run(FrameStep(model, images.shape[1:], window, stride, crop, device, types), images, rows=1,
               client=client, progress=progress, desc="domains map")
    centres = window_centres(images.shape[1:], window, stride)
    if types is None:
        labels, info = segment(maps["order"], maps["orientation"], ORDER_THRESHOLD, n_clusters)
    else:
        labels, info = maps.pop("label"), {"n_clusters": 1 + len(types), "type_angles": [float(a) for a in types]}
    if window - 2 * (window // 4) >= MIN_HALF_WINDOW:
        labels = refine_boundaries(labels, boundary_power(images, labels, window, stride, crop, seed),
                                   info["type_angles"])
    labels = refine_walls(images, labels, maps["orientation"], maps["period"], centres, window)
    if types is None:  # given types keep their numbers, empty or not
        labels, modes = drop_empty_types(labels, info["type_angles"])
        info.update(n_clusters=1 + len(modes), type_angles=[float(a) for a in modes])
    info["order_threshold"] = order_null(window, crop)[1]
    maps["segmentation"] = labels
    maps["centres"] = centres
    maps.update(domain_statistics(labels, maps["orientation"], maps["period"], maps["order"], info["n_clusters"]))
    info.update(window=int(window), stride=int(stride), crop=int(crop), periods=[float(p) for p in periods],
                record=record)
    return maps, info, model


class FrameStep:
    """The domain model's per-batch step (see :mod:`stemae.runner`): images
    ``(B, H, W)`` to everything their windows say, on the window grid
    ``(ny, nx)``: the autoencoder's ``content`` (latent), ``stretch``,
    ``shear`` and ``error``; the stripe ``order``, ``orientation`` (degrees)
    and ``period`` (px) (:func:`~stemae.domains.windows.window_stripes`,
    faint stripes pooled over neighbouring windows:
    :func:`~stemae.domains.windows.pooled_order`; one line is not stripes:
    :func:`~stemae.domains.windows.lines_are_not_stripes`);
    with the types' wall angles ``types`` (degrees, a bundle's
    ``type_angles``) also each window's ``label``
    (:func:`~stemae.domains.segment.assign_types`, before the whole-map
    refinement of walls)."""

    signal_ndim = 2

    def __init__(self, model: ae.DomainAE, shape: tuple[int, int], window: int, stride: int, crop: int,
                 device: str = "cpu", types=None):
        self.model, self.shape, self.window, self.stride, self.crop, self.device = (
            model, tuple(shape), window, stride, crop, device)
        self.types = None if types is None else [float(a) for a in types]

    def results(self) -> dict:
        grid = window_centres(self.shape, self.window, self.stride).shape[:2]
        out = {"content": (grid + (self.model.latent,), "f4", "nav"),
               **{k: (grid, "f4", "nav") for k in ("stretch", "shear", "error", "order", "orientation", "period")}}
        return out if self.types is None else {**out, "label": (grid, "i8", "nav")}

    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        spectra, _ = window_ffts(frames, self.window, self.stride, self.crop, self.device)
        coded = ae.predict(self.model, spectra, self.window, device=self.device)
        out = {**{k: coded[k] for k in ("content", "stretch", "shear", "error")},
               **window_stripes(spectra, self.window)}
        out["order"] = lines_are_not_stripes(pooled_order(spectra, out["order"], self.window, self.stride),
                                             out["period"], self.window)
        if self.types is not None:
            out["label"] = assign_types(out["order"], out["orientation"], ORDER_THRESHOLD, self.types)
        return out


def boundary_power(images: np.ndarray, labels: np.ndarray, window: int, stride: int, crop: int, seed: int = 0,
                   per_type: int = 32) -> np.ndarray:
    """Half-size windows' power per direction (``(T, ny, nx, SECTORS)``, NaN
    elsewhere) at the boundary windows and at up to ``per_type`` interior
    windows of every type and frame (drawn seeded), for
    :func:`~stemae.domains.segment.refine_boundaries`."""
    rng = np.random.default_rng(seed)
    edges = boundary_mask(labels)
    power = np.full(labels.shape + (SECTORS,), np.nan, np.float32)
    for t, frame in enumerate(images):
        pick = [np.argwhere(edges[t])]
        for k in np.unique(labels[t]):
            inner = np.argwhere((labels[t] == k) & ~edges[t])
            pick.append(inner[np.sort(rng.choice(len(inner), min(per_type, len(inner)), replace=False))])
        where = np.concatenate(pick)
        if len(where):
            power[t, where[:, 0], where[:, 1]] = half_window_power(frame, window, stride, crop, where, SECTORS)
    return power


def refine_walls(images: np.ndarray, labels: np.ndarray, orientation: np.ndarray, period: np.ndarray,
                 centres: np.ndarray, window: int) -> np.ndarray:
    """Types of the windows on boundaries from the lock-in amplitude
    (:func:`~stemae.domains.lockin.banked_lock_in`) of their neighbours'
    stripe waves: each interior window of a neighbouring type (its
    fundamental wave, turned and stretched a little for bending and uneven
    walls) is read at the boundary window's centre and at its own; the
    ratio is the share of the boundary window's centre that type covers
    (:func:`~stemae.domains.segment.assign_walls`). Interior windows whose
    own wave is weak at their centre
    (:func:`~stemae.domains.segment.weak_centres`) are examined as
    boundary windows. Where a neighbouring type has no usable interior
    window (:func:`~stemae.domains.segment.unreferenced`: regions not much
    larger than a window), every type's share is read against its own
    largest amplitude nearby instead (:func:`local_shares`).

    Parameters
    ----------
    images : (T, H, W)
    labels, orientation, period : (T, ny, nx) types, wall angles (degrees)
        and periods (px) of the windows
    centres : (ny, nx, 2) window centres ``(y, x)``, px
    window : window side, px

    Returns
    -------
    (T, ny, nx) types
    """
    out = labels.copy()
    edges = boundary_mask(labels)
    lacking = np.zeros(labels.shape, bool)
    contrasts = {}
    for t, frame in enumerate(images):
        inner = (labels[t] > 0) & ~edges[t]
        if not inner.any():
            continue
        contrast = contrasts[t] = relative_contrast(frame, float(np.nanmax(period[t][labels[t] > 0])))
        own = np.full(labels.shape[1:], np.nan)
        own[inner] = banked_lock_in(contrast, centres[inner], orientation[t][inner], period[t][inner])
        typical = np.full(labels[t].max() + 1, np.nan)
        for s in np.unique(labels[t][inner]):
            typical[s] = np.median(own[inner & (labels[t] == s)])
        examined = edges[t] | weak_centres(own, labels[t], inner)
        pairs = wall_pairs(labels[t], examined)
        a, b = pairs[:, 3], pairs[:, 4]
        usable = own[a, b] >= REFERENCE_GUARD * typical[pairs[:, 2]]
        lacking[t] = unreferenced(labels[t], examined, pairs, usable)
        if not len(pairs):
            continue
        at_edge = banked_lock_in(contrast, centres[pairs[:, 0], pairs[:, 1]], orientation[t][a, b],
                                 period[t][a, b])
        out[t] = assign_walls(labels[t], pairs, at_edge / np.maximum(own[a, b], 1e-12), usable)
    if lacking.any():
        out[lacking] = local_shares(contrasts, labels, orientation, period, centres, window, lacking)[lacking]
    return out


def local_shares(contrasts: dict, labels: np.ndarray, orientation: np.ndarray, period: np.ndarray,
                 centres: np.ndarray, window: int, where: np.ndarray) -> np.ndarray:
    """Types of the windows ``where`` from every stripe type's share of
    their centre read against its own largest amplitude nearby
    (:func:`~stemae.domains.segment.assign_by_local_share`). Each type is
    read with one bank of waves: its windows' mean wall angle turned by
    :data:`~stemae.domains.lockin.BANK_TURNS`, and periods spanning its
    windows' (5th to 95th percentile, stretched by 7 % each way, steps of
    at most 15 %), as amplitude maps of the frames that hold such windows
    (:func:`~stemae.domains.lockin.amplitude_map`).

    Parameters
    ----------
    contrasts : frame index to its (H, W) relative contrast
        (:func:`~stemae.domains.lockin.relative_contrast`), for every frame
        with windows ``where``
    labels, orientation, period : (T, ny, nx)
    centres : (ny, nx, 2) window centres ``(y, x)``, px
    window : window side, px
    where : (T, ny, nx) bool

    Returns
    -------
    (T, ny, nx) types (``labels`` elsewhere)
    """
    types = np.unique(labels[labels > 0])
    banks = []
    for s in types:
        lo, hi = np.nanpercentile(period[labels == s], [5, 95])
        n = max(3, int(np.ceil(np.log(hi / lo) / np.log(1.15))) + 1)
        banks.append((circular_mean(orientation[labels == s]) + np.asarray(BANK_TURNS),
                      np.geomspace(lo / 1.07, hi * 1.07, n)))
    frames = np.flatnonzero(where.any((1, 2)))
    iy, ix = np.round(centres).astype(int).transpose(2, 0, 1)
    size = 2 * int(LOCAL_REACH * window) + 1
    at = np.zeros((len(frames), len(types)) + labels.shape[1:])
    near = np.zeros_like(at)
    for f, t in enumerate(frames):
        for k, (angles, periods) in enumerate(banks):
            amplitude = amplitude_map(contrasts[t], angles, periods)
            at[f, k] = amplitude[iy, ix]
            near[f, k] = ndimage.maximum_filter(amplitude, size, mode="nearest")[iy, ix]
    inner = ~boundary_mask(labels)[frames]
    lab = labels[frames]
    typical = np.array([np.median(at[:, k][inner & (lab == s)]) if (inner & (lab == s)).any() else np.nan
                        for k, s in enumerate(types)])
    free = inner & (lab == 0)
    noise = np.array([np.percentile(at[:, k][free], 99) if free.sum() >= 20 else 0.0 for k in range(len(types))])
    out = labels.copy()
    for f, t in enumerate(frames):
        out[t] = assign_by_local_share(labels[t], where[t], types, at[f], near[f], typical, noise)
    return out


def fractions_table(names, labels, maps: dict) -> str:
    """CSV text: one row per frame with its name, label (e.g. temperature) and,
    per domain type ``k``, ``fraction_k``, ``orientation_k_deg``, ``period_k_px``
    (empty for the domain-free type and where a type is absent)."""
    K = maps["fractions"].shape[1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "name", "label"] + [f"{q}_{k}{u}" for k in range(K)
                                              for q, u in (("fraction", ""), ("orientation", "_deg"),
                                                           ("period", "_px"))])
    for t, name in enumerate(names):
        row = [t, name, labels[t]]
        for k in range(K):
            row += [f"{maps['fractions'][t, k]:.4f}", _cell(maps["type_orientation"][t, k]),
                    _cell(maps["type_period"][t, k])]
        w.writerow(row)
    return buf.getvalue()


def _cell(value: float) -> str:
    """A table cell: two decimals, or empty where there is no value (the
    domain-free type has no wall angle or period, nor an absent type)."""
    return "" if not np.isfinite(value) else f"{value:.2f}"


def parse_labels(text: str | None, n_frames: int) -> tuple[list, str]:
    """Frame labels from ``"25,50,75"`` (numbers or names); frame indices if ``None``.

    Returns ``(labels, kind)`` with ``kind`` ``"number"`` or ``"name"``."""
    if text is None:
        return list(range(n_frames)), "number"
    labels = [s.strip() for s in text.split(",")]
    if len(labels) != n_frames:
        raise InputError(f"--labels gives {len(labels)} labels for {n_frames} frames")
    try:
        return [float(s) for s in labels], "number"
    except ValueError:
        return labels, "name"


def write_domain_results(out: Path, images: np.ndarray, names: list[str], labels: list, label_name: str,
                         maps: dict, info: dict, model: ae.DomainAE) -> dict[str, Path]:
    """Write ``domains.zarr``, ``fractions.csv``, the model bundle and figures into ``out``."""
    from stemae import viz

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: (maps[k], *DOMAIN_ARRAYS[k]) for k in DOMAIN_ARRAYS}
    attrs = {"frames": names, "labels": labels, "label_name": label_name,
             **{k: v for k, v in info.items() if k != "record"}, "training": info["record"]}
    paths = {"results": write_results(out / "domains.zarr", arrays, attrs)}
    with atomic_path(out / "fractions.csv") as tmp:
        tmp.write_text(fractions_table(names, labels, maps))
    paths["table"] = out / "fractions.csv"
    ae.save_model(out / "model", model, {"window": info["window"], "stride": info["stride"],
                                         "type_angles": info["type_angles"], "training": info["record"]})
    paths["model"] = out / "model"
    paths["segmentation"] = viz.plot_segmentation(images, maps, names, out / "segmentation.png")
    paths["latents"] = viz.plot_domain_latents(maps, names, out / "latent_maps.png")
    paths["fractions"] = viz.plot_fractions(labels, label_name, maps, out / "fractions.png")
    if info["record"]["loss"]:
        paths["loss"] = viz.plot_loss(info["record"]["loss"], out / "loss.png", "reconstruction loss")
    return paths
