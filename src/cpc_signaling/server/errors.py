"""The exceptions the server-side API raises; defined, with the whole tree, in
:mod:`cpc_signaling.errors`."""

from __future__ import annotations

from ..errors import Unavailable

__all__ = ["Unavailable"]
