"""ReFineG for grounded multimodal named entity recognition (GMNER)."""

__version__ = "0.1.0"
