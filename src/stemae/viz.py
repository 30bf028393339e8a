"""Figures written next to the numbers (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stemae.data.results import atomic_path  # noqa: E402

STRAIN_PANELS = (
    ("e_xx", r"$\varepsilon_{xx}$", "%"),
    ("e_yy", r"$\varepsilon_{yy}$", "%"),
    ("e_xy", r"$\varepsilon_{xy}$", "%"),
    ("theta", r"$\theta$", "deg"),
)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _limits(values: np.ndarray, centred: bool) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return -1.0, 1.0
    if centred:
        m = float(np.percentile(np.abs(v), 99)) or 1e-6
        return -m, m
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def scale_bar(ax, n_pixels: int, scan_step: tuple[float, str] | None) -> None:
    """A scale bar of a round length near a fifth of ``n_pixels`` scan steps
    of ``scan_step = (size, units)`` at the lower left of ``ax``; nothing if
    the scan is not calibrated."""
    if not scan_step or not scan_step[0]:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    step, units = scan_step
    target = n_pixels * step / 5
    length = max(v * 10.0 ** np.floor(np.log10(target)) for v in (1, 2, 5) if v * 10.0 ** np.floor(np.log10(target))
                 <= target)
    ax.add_artist(AnchoredSizeBar(ax.transData, length / step, f"{length:g} {units}", "lower left", pad=0.3,
                                  color="black", frameon=True, size_vertical=max(n_pixels / 80, 0.3)))


def plot_strain_maps(maps: dict, path, valid: np.ndarray | None = None, title: str = "",
                     scan_step: tuple[float, str] | None = None) -> Path:
    """Four panels (e_xx, e_yy, e_xy in percent, theta in degrees) with colour bars.

    Parameters
    ----------
    maps : dict with ``e_xx``, ``e_yy``, ``e_xy`` (dimensionless) and
        ``theta`` (degrees), arrays (Ry, Rx)
    path : PNG path, written atomically
    valid : bool (Ry, Rx), optional; invalid positions are drawn grey
    scan_step : (size, units) of a scan step, for a scale bar
    """
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), constrained_layout=True)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    for ax, (key, label, unit) in zip(axes, STRAIN_PANELS):
        img = np.array(maps[key], dtype=np.float64) * (100.0 if unit == "%" else 1.0)
        if valid is not None:
            img[~valid] = np.nan
        lo, hi = _limits(img, centred=unit == "%")
        if unit == "deg":
            med = np.nanmedian(img) if np.isfinite(img).any() else 0.0
            half = max(abs(lo - med), abs(hi - med), 1e-3)
            lo, hi = med - half, med + half
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(label)
        ax.set_xlabel("scan column")
        ax.set_ylabel("scan row")
        scale_bar(ax, img.shape[1], scan_step)
        fig.colorbar(im, ax=ax, shrink=0.8, label=unit)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_uncertainty_maps(maps: dict, path, valid: np.ndarray | None = None, title: str = "",
                          scan_step: tuple[float, str] | None = None) -> Path:
    """Four panels of standard deviations (``sigma_e_xx``, ``sigma_e_yy``,
    ``sigma_e_xy`` in percent, ``sigma_theta`` in degrees) with colour bars.

    Parameters
    ----------
    maps : dict with the ``sigma_`` arrays (Ry, Rx)
    path : PNG path, written atomically
    valid : bool (Ry, Rx), optional; invalid positions are drawn grey
    scan_step : (size, units) of a scan step, for a scale bar
    """
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), constrained_layout=True)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    for ax, (key, label, unit) in zip(axes, STRAIN_PANELS):
        img = np.array(maps[f"sigma_{key}"], dtype=np.float64) * (100.0 if unit == "%" else 1.0)
        if valid is not None:
            img[~valid] = np.nan
        v = img[np.isfinite(img)]
        hi = float(np.percentile(v, 99)) if v.size else 1.0
        im = ax.imshow(img, cmap=cmap, vmin=0, vmax=hi or 1e-6, interpolation="nearest")
        ax.set_title(r"$\sigma$ of " + label)
        ax.set_xlabel("scan column")
        ax.set_ylabel("scan row")
        scale_bar(ax, img.shape[1], scan_step)
        fig.colorbar(im, ax=ax, shrink=0.8, label=unit)
    fig.suptitle(title or "one standard deviation (Fisher information of each fit, reference included)")
    return _save(fig, path)


def plot_virtual_dark_field(intensity: np.ndarray, hk: np.ndarray, path, n: int = 6) -> Path:
    """Virtual dark-field images: the fitted integrated intensity of the ``n``
    reflections that are brightest over the scan.

    Parameters
    ----------
    intensity : (Ry, Rx, J) counts per reflection (NaN where off the detector)
    hk : (J, 2) reflection indices
    """
    flat = intensity.reshape(-1, intensity.shape[-1])
    seen = np.isfinite(flat).any(0)
    med = np.full(flat.shape[1], -np.inf)
    med[seen] = np.nanmedian(flat[:, seen], axis=0)
    order = np.argsort(-med)[: min(n, len(med))]
    fig, axes = plt.subplots(1, len(order), figsize=(3.4 * len(order), 3.4), constrained_layout=True, squeeze=False)
    for ax, j in zip(axes[0], order):
        img = intensity[..., j]
        v = img[np.isfinite(img)]
        lo, hi = (np.percentile(v, [1, 99]) if v.size else (0, 1))
        im = ax.imshow(img, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(f"({int(hk[j, 0])}, {int(hk[j, 1])})")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8, label="counts")
    fig.suptitle("virtual dark field: fitted counts in each reflection's disk")
    return _save(fig, path)


def plot_lattice(pattern: np.ndarray, origin, G: np.ndarray, radius: float, path, title: str = "") -> Path:
    """A diffraction pattern (log scale) with the fitted lattice drawn on it.

    Parameters
    ----------
    pattern : ndarray (Qy, Qx)
    origin : (x, y) pixels
    G : ndarray (2, 2), columns g1, g2 in pixels
    radius : disk radius in pixels
    """
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    ax.imshow(np.log1p(np.clip(pattern, 0, None)), cmap="gray")
    Qy, Qx = pattern.shape
    n = int(np.ceil(max(Qy, Qx) / np.linalg.norm(G, axis=0).min())) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    pts = np.asarray(origin) + np.stack([h.ravel(), k.ravel()], 1) @ G.T
    inside = (pts[:, 0] > -radius) & (pts[:, 0] < Qx + radius) & (pts[:, 1] > -radius) & (pts[:, 1] < Qy + radius)
    for x, y in pts[inside]:
        ax.add_patch(plt.Circle((x, y), radius, fill=False, color="tab:orange", lw=0.8))
    for g, c, name in ((G[:, 0], "tab:red", "g1"), (G[:, 1], "tab:cyan", "g2")):
        ax.annotate("", xy=np.asarray(origin) + g, xytext=origin, arrowprops=dict(color=c, arrowstyle="->", lw=2))
        ax.text(*(np.asarray(origin) + 1.1 * g), name, color=c)
    ax.set_xlim(-0.5, Qx - 0.5)
    ax.set_ylim(Qy - 0.5, -0.5)
    ax.set_title(title or "reference lattice")
    return _save(fig, path)


def plot_phase_map(phase: np.ndarray, probabilities: np.ndarray, path, names=None) -> Path:
    """Phase (class) map and how sure each position's class is.

    Parameters
    ----------
    phase : int (Ry, Rx); probabilities : (Ry, Rx, K)
    names : K labels of the classes (e.g. their d-spacings), default "class k"

    The confidence panel shows ``-log10(1 - p)`` of the chosen class's
    probability ``p`` (6 where ``p`` rounds to 1): near-certain positions
    are bright, doubtful ones (a boundary, a weak pattern) dark.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    K = probabilities.shape[-1]
    im = axes[0].imshow(phase, cmap=type_colours(max(K, 2)), vmin=-0.5, vmax=max(K, 2) - 0.5,
                        interpolation="nearest")
    bar = fig.colorbar(im, ax=axes[0], ticks=range(K))
    bar.ax.set_yticklabels(names if names is not None else [f"class {k}" for k in range(K)], fontsize=8)
    axes[0].set_title("phase")
    doubt = np.clip(1.0 - probabilities.max(-1).astype(np.float64), 1e-6, 1.0)
    im = axes[1].imshow(-np.log10(doubt), cmap="viridis", vmin=0, vmax=6, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], label="-log10(1 - p)")
    axes[1].set_title("class confidence")
    for ax in axes:
        ax.set_xlabel("scan column")
        ax.set_ylabel("scan row")
    return _save(fig, path)


def plot_diagnostics(stats: dict, path, com: np.ndarray | None = None,
                     scan_step: tuple[float, str] | None = None) -> Path:
    """Mean and maximum pattern, Bragg vector map, virtual bright and dark
    field (and, given ``com`` (Ry, Rx, 2), the centre-of-mass shift, DPC-like,
    along x and y about its median)."""
    panels = [("mean pattern (log)", np.log1p(stats["mean_pattern"]), "gray"),
              ("maximum pattern (log)", np.log1p(stats["max_pattern"]), "gray"),
              ("Bragg vector map (sqrt)", np.sqrt(stats["bragg_vector_map"]), "magma"),
              ("virtual bright field", stats["virtual_bf"], "gray"),
              ("virtual dark field", stats["virtual_df"], "gray")]
    if com is not None:
        shift = com - np.nanmedian(com.reshape(-1, 2), 0)
        panels += [("centre of mass, x shift (px)", shift[..., 0], "RdBu_r"),
                   ("centre of mass, y shift (px)", shift[..., 1], "RdBu_r")]
    cols = 4 if len(panels) > 6 else 3
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(3.6 * cols, 3.4 * -(-len(panels) // cols)),
                             constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, img, cmap) in zip(axes.flat, panels):
        lo, hi = (0.0, float(img.max()) or 1.0) if cmap == "magma" else _limits(img, cmap == "RdBu_r")
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
        if "pattern" not in title and "Bragg" not in title:
            scale_bar(ax, img.shape[1], scan_step)
    return _save(fig, path)


def plot_loss(losses, path, label: str = "cycle loss") -> Path:
    """Training loss per epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    ax.plot(np.arange(1, len(losses) + 1), losses, "o-")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_yscale("log")
    ax.set_title("training")
    return _save(fig, path)


def plot_bases(bases: np.ndarray, hk: np.ndarray, radius: float, shape, center, path) -> Path:
    """The learned base patterns: disks of the probe radius at each base's
    reflections. ``bases`` (K, 2, 2) reciprocal bases in pixels."""
    from stemae.simulate import render_disks

    K = len(bases)
    fig, axes = plt.subplots(1, K, figsize=(4 * K, 4), constrained_layout=True, squeeze=False)
    for k, ax in enumerate(axes[0]):
        pos = np.concatenate([[center], np.asarray(center) + hk @ bases[k].T])[None]
        img = render_disks(pos, np.ones(pos.shape[:2]), tuple(shape), radius)[0]
        ax.imshow(img, cmap="gray")
        ax.set_title(f"base {k}: |g1| {np.linalg.norm(bases[k][:, 0]):.2f} px, |g2| {np.linalg.norm(bases[k][:, 1]):.2f} px")
    return _save(fig, path)


def _frames_grid(n: int):
    """A grid of up to four columns for ``n`` frames: ``(fig, axes)``."""
    cols = min(n, 4)
    rows = -(-n // cols)
    return plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), constrained_layout=True, squeeze=False)


def type_colours(n: int) -> matplotlib.colors.ListedColormap:
    """``n`` distinct saturated colours (tab10, then tab20, without their
    greys, which vanish on a grey image)."""
    base = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    extra = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 and i not in (15,)]
    return matplotlib.colors.ListedColormap((base + extra)[:n])


def plot_segmentation(images: np.ndarray, maps: dict, names, path) -> Path:
    """Each frame with its domain types overlaid (one colour per type).

    ``images`` (T, H, W); ``maps`` from :func:`stemae.domains.run.map_domains`."""
    seg, centres = maps["segmentation"], maps["centres"]
    K = maps["fractions"].shape[1]
    cmap = type_colours(max(K, 2))
    fig, axes = _frames_grid(len(images))
    step = (centres[-1, -1] - centres[0, 0]) / np.maximum(np.array(seg.shape[1:]) - 1, 1) / 2
    extent = (centres[0, 0, 1] - step[1], centres[0, -1, 1] + step[1],
              centres[-1, 0, 0] + step[0], centres[0, 0, 0] - step[0])
    for t, ax in enumerate(axes.flat):
        ax.axis("off")
        if t >= len(images):
            continue
        lo, hi = _limits(images[t], False)
        ax.imshow(images[t], cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(seg[t], cmap=cmap, vmin=-0.5, vmax=max(K, 2) - 0.5, alpha=0.45, extent=extent,
                  interpolation="nearest")
        ax.set_title(str(names[t]), fontsize=9)
    handles = [matplotlib.patches.Patch(color=cmap(k), label="type 0 (domain-free)" if k == 0 else
                                        f"type {k} ({maps['series_orientation'][k]:.0f} deg)") for k in range(K)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(K, 8))
    return _save(fig, path)


def plot_domain_latents(maps: dict, names, path, max_frames: int = 4) -> Path:
    """Per frame: wall orientation, period, stripe order and the two most
    active content latents, at the window grid."""
    T = min(len(names), max_frames)
    content = maps["content"]
    active = np.argsort(-np.abs(content).reshape(-1, content.shape[-1]).mean(0))[:2]
    panels = [("orientation", "wall angle (deg)", "twilight", (-90, 90)),
              ("period", "period (px)", "viridis", None),
              ("order", "stripe order (1: noise level)", "magma", None)]
    fig, axes = plt.subplots(T, len(panels) + 2, figsize=(3.0 * (len(panels) + 2), 2.8 * T),
                             constrained_layout=True, squeeze=False)
    for t in range(T):
        items = [(maps[k][t], lab, cm, lim) for k, lab, cm, lim in panels]
        items += [(content[t, ..., c], f"content {c}", "RdBu_r", None) for c in active]
        for ax, (img, lab, cm, lim) in zip(axes[t], items):
            vmin, vmax = lim or _limits(img, cm == "RdBu_r")
            im = ax.imshow(img, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{names[t]}: {lab}", fontsize=8)
            ax.axis("off")
    return _save(fig, path)


def plot_fractions(labels, label_name: str, maps: dict, path) -> Path:
    """Fraction of each domain type per frame against the frame labels."""
    frac = maps["fractions"]
    numeric = all(isinstance(v, (int, float)) for v in labels)
    x = np.asarray(labels, float) if numeric else np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    cmap = plt.get_cmap("tab10", max(frac.shape[1], 2))
    for k in range(frac.shape[1]):
        what = "domain-free" if k == 0 else f"walls at {maps['series_orientation'][k]:.0f} deg"
        ax.plot(x, frac[:, k], "o-", color=cmap(k), label=f"type {k} ({what})")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in labels], rotation=45, ha="right")
    ax.set_xlabel(label_name)
    ax.set_ylabel("fraction of windows")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, path)
