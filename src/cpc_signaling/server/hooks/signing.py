"""Webhook signatures: HMAC-SHA256 over the timestamp and the body, as Stripe signs.

Every request the server sends to a webhook carries::

    X-CPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

``<t>`` is the time of this attempt (a retry is signed again, with a new
``t``; the body is the same bytes), ``body`` the exact bytes of the request
body. A receiver recomputes the HMAC over ``f"{t}.".encode() + body`` with the
shared secret, compares in constant time, and rejects a ``t`` too far from its
own clock (five minutes is the usual tolerance): a captured request cannot be
replayed later. A receiver that dedupes by event id is safe from replays
within the tolerance too.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-CPC-Signature"
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between ``t`` and its own clock


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-CPC-Signature`` value for ``body`` at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(_key(secret), t, body)}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within ``tolerance``.

    For receivers written in Python (the SQLite example uses it). Several ``v1=``
    entries are accepted, any one matching suffices.
    """
    if not header or len(header) > 1024:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _mac(_key(secret), timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in candidates)
