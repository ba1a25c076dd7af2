"""Colorization pretext: colour maths, quantisation, rebalancing, losses, encoders,
image sources and the pretext trainer. Imports nothing from downstream/benchmarks."""
__version__ = "0.1.0"
