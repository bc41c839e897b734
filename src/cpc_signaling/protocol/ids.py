"""Document and user ids: UUID strings, compared and sent in canonical form.

The pattern is the one the message types validate with (``messages.UUID_PATTERN``),
compiled once here for every check made outside the decoder (tokens, the HTTP API).
"""

from __future__ import annotations

import re
from typing import Final

from .messages import UUID_PATTERN

_UUID: Final = re.compile(UUID_PATTERN)


def is_uuid(value: object) -> bool:
    """True for a UUID string in the protocol's shape (8-4-4-4-12 hex digits, any case)."""
    return isinstance(value, str) and _UUID.match(value) is not None


def canonical_uuid(value: str) -> str:
    """``value`` as a canonical UUID string (lowercase, hyphenated); ValueError if not one."""
    if not is_uuid(value):
        raise ValueError(f"not a UUID: {value[:64]!r}")
    return value.lower()
