"""Synthetic data with ground truth for tests, demos and benchmarks."""

from stemae.simulate.diffraction import (
    CUBIC,
    PRESETS,
    TETRAGONAL,
    WS2,
    WSE2,
    Phase,
    SimulatedDatacube,
    electron_wavelength,
    heterostructure,
    polycrystal,
    render_disks,
    simulate_datacube,
)
from stemae.simulate.multislice import simulate_multislice

__all__ = [
    "CUBIC",
    "PRESETS",
    "TETRAGONAL",
    "WS2",
    "WSE2",
    "Phase",
    "SimulatedDatacube",
    "electron_wavelength",
    "heterostructure",
    "polycrystal",
    "render_disks",
    "simulate_datacube",
    "simulate_multislice",
]
