"""Minting tokens the server accepts: for development, tests and simple deployments.

Production deployments usually mint tokens in their own auth service; the
claims the server reads are ``sub`` (the user_id, a UUID), ``exp``, and
optionally ``docs`` (document_ids the holder may join), ``aud`` and ``iss``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def mint_token(
    *,
    sub: str,
    secret: str | None = None,
    private_key_pem: bytes | None = None,
    ttl: float = 3600.0,
    docs: Iterable[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed JWT for ``sub``: HS256 with ``secret``, RS256/ES256 with a PEM private key."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if docs is not None:
        claims["docs"] = list(docs)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    claims.update(extra or {})
    if secret and private_key_pem:
        raise ValueError("give either a secret or a private key, not both")
    if secret:
        return jwt.encode(claims, secret, algorithm="HS256")
    if private_key_pem:
        key = load_pem_private_key(private_key_pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return jwt.encode(claims, key, algorithm="RS256")
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
            return jwt.encode(claims, key, algorithm=_EC_ALGORITHMS[key.curve.name])
        raise ValueError("the private key must be RSA or EC (P-256, P-384, P-521)")
    raise ValueError("a secret (--jwt-secret) or a private key (--jwt-private-key) is needed")
