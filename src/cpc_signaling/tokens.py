"""Minting tokens the server accepts: for development, tests and simple deployments.

Production deployments usually mint tokens in their own auth service; the
claims the server reads are ``sub`` (the user_id, a UUID), ``exp``, and
optionally ``docs`` (document_ids the holder may join), ``info`` (the user's
name, avatar, colour, ..., shown to the others), ``aud`` and ``iss``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
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


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """``cpc-signaling token``: flags default to the server's ``CPC_JWT_*`` variables."""
    env = os.environ.get
    parser.add_argument(
        "--jwt-secret",
        default=env("CPC_JWT_SECRET") or None,
        help="HS256 secret the server verifies with (env CPC_JWT_SECRET)",
    )
    parser.add_argument(
        "--jwt-private-key",
        default=env("CPC_JWT_PRIVATE_KEY") or None,
        help="PEM file of the RSA/EC private key matching the server's --jwt-public-key",
    )
    parser.add_argument(
        "--sub", type=_uuid, default=None, help="the user_id (a UUID; default: a new random one)"
    )
    parser.add_argument(
        "--docs",
        type=_uuids,
        default=None,
        help="comma list of document_ids the token may join (default: any)",
    )
    parser.add_argument(
        "--info",
        type=_info,
        default=None,
        help='the user\'s info, a JSON object shown to the others (e.g. \'{"name": "Ada"}\')',
    )
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)"
    )
    parser.add_argument(
        "--audience",
        default=env("CPC_JWT_AUDIENCE") or None,
        help="`aud` claim (env CPC_JWT_AUDIENCE)",
    )
    parser.add_argument(
        "--issuer", default=env("CPC_JWT_ISSUER") or None, help="`iss` claim (env CPC_JWT_ISSUER)"
    )


def token_command(args: argparse.Namespace) -> int:
    """Print a token on stdout (and the user_id on stderr when it was generated)."""
    sub = args.sub
    if sub is None:
        sub = str(uuid.uuid4())
        print(f"sub (user_id): {sub}", file=sys.stderr)
    try:
        pem = Path(args.jwt_private_key).read_bytes() if args.jwt_private_key else None
    except OSError as exc:
        print(f"cpc-signaling token: error: --jwt-private-key: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        token = mint_token(
            sub=sub,
            secret=args.jwt_secret,
            private_key_pem=pem,
            ttl=args.ttl,
            docs=args.docs,
            audience=args.audience,
            issuer=args.issuer,
            extra={"info": args.info} if args.info is not None else None,
        )
    except ValueError as exc:
        print(f"cpc-signaling token: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _uuid(raw: str) -> str:
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a UUID") from None


def _uuids(raw: str) -> list[str]:
    return [_uuid(item) for item in raw.split(",") if item.strip()]


def _info(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the info must be a JSON object")
    if len(json.dumps(value, separators=(",", ":")).encode()) > 1024:
        raise argparse.ArgumentTypeError("the info must be at most 1024 bytes encoded")
    return value
