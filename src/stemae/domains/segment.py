"""Segmentation of window latents into domain types, and per-frame statistics.

The features of a window are its content latents (scaled to unit total
variance) and its orientation as a doubled-angle vector weighted by the
spectrum's anisotropy, so that 0 and 180 degrees coincide and an isotropic,
domain-free window sits at the centre whatever its nominal angle. K-means
clusters them jointly across the frames of a series, with the number of
clusters given or chosen by the silhouette score.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from stemae.errors import InputError

#: Weight of the orientation features against the content.
ORIENTATION_WEIGHT = 8.0
#: Silhouette scores closer than this count as tied; the fewer clusters win.
SILHOUETTE_TIE = 0.005
#: Below this best silhouette score the windows show no distinct types: one type.
MIN_SILHOUETTE = 0.4


def cluster_features(content: np.ndarray, orientation: np.ndarray, anisotropy: np.ndarray) -> np.ndarray:
    """Features ``(N, latent + 2)`` from content ``(N, latent)``, orientation
    ``(N,)`` in degrees and anisotropy ``(N,)`` in [0, 1]."""
    z = content - content.mean(0)
    z = z / max(np.sqrt((z**2).sum(1).mean()), 1e-12)
    t = np.deg2rad(2 * orientation)
    o = ORIENTATION_WEIGHT * anisotropy[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return np.concatenate([z, o], 1)


def choose_k(features: np.ndarray, k_range=range(2, 9), sample: int = 4000, seed: int = 0) -> tuple[int, dict]:
    """Number of clusters by the silhouette score on a seeded sample: the
    smallest ``k`` whose score is within :data:`SILHOUETTE_TIE` of the best
    (splitting one domain type in two can leave the score unchanged), or 1
    if no ``k`` reaches :data:`MIN_SILHOUETTE` (a split of a single type
    scores about 0.25 to 0.35; distinct types score 0.55 and more).

    Returns ``(k, {k: score})``."""
    rng = np.random.default_rng(seed)
    x = features[rng.choice(len(features), min(sample, len(features)), replace=False)]
    scores = {}
    for k in k_range:
        if k >= len(x):
            break
        lab = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
        scores[k] = float(silhouette_score(x, lab)) if len(np.unique(lab)) > 1 else -1.0
    if not scores:
        raise InputError(f"too few windows ({len(features)}) to segment")
    best = max(scores.values())
    if best < MIN_SILHOUETTE:
        return 1, scores
    return min(k for k, v in scores.items() if v >= best - SILHOUETTE_TIE), scores


def segment(features: np.ndarray, anisotropy: np.ndarray, orientation: np.ndarray, n_clusters: int | None = None,
            seed: int = 0) -> tuple[np.ndarray, dict]:
    """Cluster windows into domain types.

    Parameters
    ----------
    features : (N, F) from :func:`cluster_features`
    anisotropy, orientation : (N,) used to order the clusters
    n_clusters : number of domain types; ``None`` chooses it (:func:`choose_k`)
    seed : random seed of k-means

    Returns
    -------
    labels : (N,) int, ordered: the least anisotropic type (domain-free) first,
        then the others by mean orientation from -90 to 90 degrees
    info : dict with ``n_clusters`` and, when chosen, the ``silhouette`` scores
    """
    info = {}
    if n_clusters is None:
        n_clusters, info["silhouette"] = choose_k(features, seed=seed)
    if not 1 <= n_clusters <= len(features):
        raise InputError(f"cannot make {n_clusters} clusters of {len(features)} windows")
    raw = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(features)
    aniso = np.array([anisotropy[raw == k].mean() for k in range(n_clusters)])
    angle = np.array([circular_mean(orientation[raw == k]) for k in range(n_clusters)])
    first = int(np.argmin(aniso))
    rest = sorted((k for k in range(n_clusters) if k != first), key=lambda k: angle[k])
    order = np.empty(n_clusters, int)
    order[[first] + rest] = np.arange(n_clusters)
    info["n_clusters"] = n_clusters
    return order[raw], info


def circular_mean(orientation: np.ndarray) -> float:
    """Mean of axial angles in degrees (period 180), in [-90, 90); NaN if empty."""
    if orientation.size == 0:
        return float("nan")
    t = np.deg2rad(2 * orientation)
    return float(np.rad2deg(np.arctan2(np.sin(t).mean(), np.cos(t).mean())) / 2)


def domain_statistics(labels: np.ndarray, orientation: np.ndarray, period: np.ndarray, anisotropy: np.ndarray,
                      n_clusters: int) -> dict[str, np.ndarray]:
    """Per frame and domain type: fraction of windows, mean orientation, mean period.

    Parameters
    ----------
    labels, orientation, period, anisotropy : (T, ny, nx)
    n_clusters : number of domain types

    Returns
    -------
    dict of (T, n_clusters) arrays: ``fractions``, ``type_orientation``
    (degrees, axial mean), ``type_period`` (pixels, median), NaN where a type
    is absent; and of (n_clusters,) arrays over the whole series:
    ``series_orientation``, ``series_period``, ``series_order`` (median
    anisotropy: near 0 for domain-free windows).
    """
    T = labels.shape[0]
    frac = np.zeros((T, n_clusters))
    ang = np.full((T, n_clusters), np.nan)
    per = np.full((T, n_clusters), np.nan)
    for t in range(T):
        for k in range(n_clusters):
            m = labels[t] == k
            frac[t, k] = m.mean()
            if m.any():
                ang[t, k] = circular_mean(orientation[t][m])
                per[t, k] = np.median(period[t][m])
    series_ang = np.array([circular_mean(orientation[labels == k]) for k in range(n_clusters)])
    series_per, series_order = (np.array([np.median(v[labels == k]) if (labels == k).any() else np.nan
                                          for k in range(n_clusters)]) for v in (period, anisotropy))
    return {"fractions": frac, "type_orientation": ang, "type_period": per, "series_orientation": series_ang,
            "series_period": series_per, "series_order": series_order}
