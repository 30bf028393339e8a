"""4D-STEM strain and phase mapping."""

from stemae.strain.classical import METHODS, detect_disks, fit_lattices, map_strain

__all__ = ["METHODS", "detect_disks", "fit_lattices", "map_strain"]
