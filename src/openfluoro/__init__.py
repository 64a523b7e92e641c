"""OpenFluoro: an open virtual fluoroscope."""
__version__ = "0.1.0"
