"""The training platform's trainer-side SDK."""

__version__ = "0.1.0"
