"""Exceptions the server-side API raises (its callers: the HTTP API, embedding apps)."""

from __future__ import annotations


class Unavailable(Exception):
    """The service cannot act now (draining, or its backend is not ready)."""
