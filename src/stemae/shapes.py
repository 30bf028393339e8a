"""The disk edge every part of stemae draws: the simulator's disks, the
correlation template, the fits' analytic profile table (the measured and
pseudo-Voigt profiles of :mod:`stemae.strain.profiles` replace it where the
data say better)."""

from __future__ import annotations

import numpy as np
from scipy import special


def disk_edge(r, radius: float, edge: float):
    """A disk of radius ``radius`` (px, where it falls to one half) whose edge
    is a Gaussian blur of standard deviation ``edge`` (px):
    ``erfc((r - radius) / (sqrt(2) edge)) / 2`` at distances ``r`` (px, any
    shape); 1 inside, 0 far outside."""
    return 0.5 * special.erfc((np.asarray(r, np.float64) - radius) / (np.sqrt(2.0) * edge))
