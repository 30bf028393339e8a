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
(:mod:`stemae.strain.ccstae.likelihood`) adds per-disk amplitudes and offsets and a
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
(:func:`stemae.strain.ccstae.likelihood.fit_disk_lattice`) of every disk, those cut by the
detector edge included, whose Fisher information gives each position's
uncertainty; strain follows from ``G = A G_k`` through :mod:`stemae.geometry`.
"""

from stemae.strain.ccstae.init import initialise
from stemae.strain.ccstae.model import CCSTAE, KIND, PROFILES, load, save, stretch
from stemae.strain.ccstae.predict import (
           OUTPUTS,
           PredictStep,
           isolated_phases,
           predict,
           to_strain,
)
from stemae.strain.ccstae.train import fit

__all__ = ["KIND", "PROFILES", "CCSTAE", "OUTPUTS", "PredictStep", "fit", "initialise", "isolated_phases", "load",
           "predict", "save", "stretch", "to_strain"]
