"""h2osim: an educational simulator and theory-verification toolkit for KV-cache eviction.

Centred on H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048).
Entry points: ``python -m h2osim.replay``, ``python -m h2osim.synth``.
"""

__version__ = "0.1.0"
