"""4D-STEM strain and phase mapping: classical methods and the CC-ST-AE."""

from stemae.strain.classical import detect_disks, fit_lattices, map_strain

__all__ = ["detect_disks", "fit_lattices", "map_strain"]
