"""User info: a small JSON object that says who a user is (name, avatar, colour, ...).

An extension of the seed protocol. It comes from a token's ``info`` claim, or in
open mode from the user's ``JoinDocument``, and rides on the ``JoinDocument``
frames the server sends about that user. Its wire form is canonical: compact
JSON, object keys sorted at every level, so the same object always has the same
bytes (on every instance, whatever key order or whitespace it was given in).

Bounds: a JSON object (not an array, string, ...), at most :data:`MAX_INFO_BYTES`
in canonical form and nested at most :data:`MAX_INFO_DEPTH` deep (the object
itself is depth 1). An empty object is no info.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

MAX_INFO_BYTES: Final = 1024
MAX_INFO_DEPTH: Final = 16

_ENCODER: Final = msgspec.json.Encoder(order="deterministic")


def encode_info(info: Any) -> bytes:
    """The canonical encoding of ``info``; ``b""`` for None or ``{}`` (no info).

    Raises ValueError, whose message completes "info ...", when it is out of bounds.
    """
    if info is None:
        return b""
    if not isinstance(info, dict):
        raise ValueError(f"must be a JSON object, got {_json_type(info)}")
    if not info:
        return b""
    _check_depth(info)
    try:
        encoded = _ENCODER.encode(info)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        raise ValueError("must hold JSON values only") from None
    if len(encoded) > MAX_INFO_BYTES:
        raise ValueError(f"must be at most {MAX_INFO_BYTES} bytes encoded, got {len(encoded)}")
    return encoded


def _check_depth(info: dict[Any, Any]) -> None:
    # Iterative: a hostile object must not be able to exhaust the stack here either.
    pending: list[tuple[Any, int]] = [(info, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_INFO_DEPTH:
            raise ValueError(f"must be nested at most {MAX_INFO_DEPTH} deep")
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise ValueError("must have string keys only")
            pending.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            pending.extend((v, depth + 1) for v in value)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
