"""cpc-signaling: live presence for collaborative applications."""

__version__ = "0.1.0"
