"""medfusion: multimodal fusion trainer (metadata forest + image branches) for medical images."""

__version__ = "0.1.0"
