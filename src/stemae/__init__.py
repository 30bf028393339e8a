"""stemae: strain, phase and domain maps from STEM data."""

__version__ = "0.1.0"
