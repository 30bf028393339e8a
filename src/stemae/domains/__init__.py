"""Domain maps from bright-field STEM images with a windowing autoencoder."""

from stemae.domains.model import DomainAE, fit, l1_weight, load_model, predict, save_model
from stemae.domains.run import map_domains
from stemae.domains.segment import domain_statistics, segment
from stemae.domains.windows import choose_window, window_centres, window_ffts, window_stripes

__all__ = [
    "DomainAE",
    "choose_window",
    "domain_statistics",
    "fit",
    "l1_weight",
    "load_model",
    "map_domains",
    "predict",
    "save_model",
    "segment",
    "window_centres",
    "window_ffts",
    "window_stripes",
]
