"""kb: a private, local knowledge-base assistant."""

__version__ = "0.1.0"
