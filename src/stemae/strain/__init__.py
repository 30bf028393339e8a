"""4D-STEM strain and phase mapping: classical methods and the CC-ST-AE."""

from stemae.strain.classical import fit_lattices, fit_state, map_strain

__all__ = ["fit_lattices", "fit_state", "map_strain"]
