"""I/O and validation: datacube readers, results stores, block streaming."""

from stemae.data.blocks import read_patterns, rows_for_budget
from stemae.data.calibration import Calibration
from stemae.data.readers import Datacube, as_datacube_array, read_datacube, write_datacube
from stemae.data.results import atomic_path, read_results, write_results

__all__ = [
    "Calibration",
    "Datacube",
    "as_datacube_array",
    "atomic_path",
    "read_datacube",
    "read_patterns",
    "read_results",
    "rows_for_budget",
    "write_datacube",
    "write_results",
]
