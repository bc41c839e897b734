"""Who may connect: JWT authentication and the browser Origin check.

Pure functions of a token or a header, no I/O: the transport extracts the
token (``?token=`` or ``Authorization: Bearer``) and the Origin header, and the
service turns the result into a connection bound to a user, or into
``AUTH_ERROR`` and close 1008.

Choices where the contract is silent (docs/security.md explains them):

- ``exp`` and ``sub`` are required: a token that never expires is refused.
- ``sub`` must be a UUID; ``docs``, when present, a list of UUIDs.
- A key of one family only accepts that family's algorithms (HS256 for a
  secret; RS256 for an RSA key; ES256/ES384/ES512 for EC keys by curve), so a
  public key can never be used as an HMAC secret ("alg confusion").
- A token with an ``aud`` claim is refused unless ``--jwt-audience`` names one
  of its audiences (PyJWT's default, kept on purpose).
- ``--jwt-max-age`` refuses a token whose ``exp`` is further away than that: a
  token leaked from a URL or a log must not stay good for a year.
- An empty secret is an error, never "no authentication"; without a key the
  standalone server listens on a public address only with ``--open``.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import AuthError
from ..protocol.ids import is_uuid
from ..protocol.info import encode_info
from .config import Config

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# Shorter HMAC secrets are brute-forceable offline from any token (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
# A token larger than this is not a token; it is refused before any parsing.
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    """What a valid token grants."""

    user_id: str
    allowed_documents: frozenset[str] | None  # None: any document
    expires_at: float  # Unix time after which the connection is closed (leeway included)
    info: bytes = b""  # the `info` claim, canonical JSON (protocol.encode_info); empty: none
    claims: dict[str, Any] | None = None  # all the token's claims (for the join hook)


class Authenticator:
    """Verifies tokens with one configured key; ``enabled`` is False without a key."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_pem: bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        max_age: float = 0.0,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError("the JWT secret is empty: give one, or none for open mode")
        if secret and public_key_pem:
            raise ValueError("give either a JWT secret or a JWT public key, not both")
        if leeway < 0:
            raise ValueError("--jwt-leeway must be >= 0")
        if max_age < 0:
            raise ValueError("--jwt-max-age must be >= 0")
        self.max_age = float(max_age)
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = float(leeway)
        self._key: Any = None
        self.algorithms: list[str] = []
        self.weak_secret = False
        if secret:
            self._key = secret.encode()
            self.algorithms = ["HS256"]
            self.weak_secret = len(self._key) < MIN_SECRET_BYTES
        elif public_key_pem:
            key = load_pem_public_key(public_key_pem)
            if isinstance(key, rsa.RSAPublicKey):
                self.algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
                self.algorithms = [_EC_ALGORITHMS[key.curve.name]]
            else:
                raise ValueError("the JWT public key must be RSA or EC (P-256, P-384, P-521)")
            self._key = key

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        pem = Path(config.jwt_public_key).read_bytes() if config.jwt_public_key else None
        return cls(
            secret=config.jwt_secret,
            public_key_pem=pem,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
            max_age=config.jwt_max_age,
        )

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def describe(self) -> str:
        """One phrase for the start-up log line (never the key)."""
        if not self.enabled:
            return "running OPEN, no authentication: any client may claim any user_id"
        extra = "".join(
            f", {name} {value}"
            for name, value in (("audience", self.audience), ("issuer", self.issuer))
            if value
        )
        return f"JWT authentication ({'/'.join(self.algorithms)}{extra})"

    def authenticate(self, token: str | None) -> Identity:
        """The identity ``token`` grants, or :class:`AuthError`."""
        assert self.enabled, "authenticate() needs a configured key"
        if not token:
            raise AuthError("missing token: pass ?token=... or 'Authorization: Bearer ...'")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed token: too long")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not accepted here") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not accepted here") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            expected = self.algorithms[0]
            raise AuthError(f"token algorithm is not accepted (expected {expected})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no `{exc.claim}` claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet (nbf/iat in the future)") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {_safe(exc)}") from None
        except Exception:  # whatever a hostile token trips in a library: still a refusal
            raise AuthError("malformed token") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not is_uuid(sub):
            raise AuthError("token `sub` claim must be a user_id (a UUID)")
        docs = claims.get("docs")
        allowed: frozenset[str] | None = None
        if docs is not None:
            if not isinstance(docs, list) or not all(is_uuid(d) for d in docs):
                raise AuthError("token `docs` claim must be a list of document_ids (UUIDs)")
            allowed = frozenset(d.lower() for d in docs)
        exp = float(claims["exp"])  # PyJWT checked it is a number
        if self.max_age and exp - time.time() > self.max_age + self.leeway:
            raise AuthError(
                f"token lives too long: its `exp` is more than {self.max_age:g}s away "
                "(this server's --jwt-max-age)"
            )
        try:
            info = encode_info(claims.get("info"))
        except ValueError as exc:
            raise AuthError(f"token `info` claim {exc}") from None
        return Identity(sub.lower(), allowed, exp + self.leeway, info, claims)


def _safe(exc: Exception) -> str:
    # PyJWT's messages describe the token's shape, never echo it; keep them short anyway.
    return str(exc)[:200]


def bearer_token(query_token: str | None, authorization: str | None) -> str | None:
    """The token from ``Authorization: Bearer`` (preferred) or the ``token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


class OriginPolicy:
    """Which browser origins may open a WebSocket (``--allowed-origins``).

    ``*`` (the default) allows any. A list allows exactly those origins
    (scheme://host[:port], compared case-insensitively, a trailing ``/``
    ignored). A handshake without an Origin header is not from a browser
    (every browser sends one on a WebSocket handshake) and is always allowed:
    a non-browser client could forge any Origin anyway, so refusing it would
    protect nothing; the token is what authenticates.
    """

    __slots__ = ("_origins", "any")

    def __init__(self, spec: str | Iterable[str] | None = "*") -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec or ["*"])
        origins = {_normalize(item) for item in items if item.strip()}
        self.any = not origins or "*" in origins
        self._origins = frozenset(origins - {"*"})

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.any:
            return True
        return _normalize(origin) in self._origins

    def describe(self) -> str:
        return "any origin" if self.any else "origins " + ", ".join(sorted(self._origins))


def _normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything: not known to be loopback


def config_problem(config: Config) -> str | None:
    """Why the standalone server must not start with ``config`` (a bad key file, half a
    TLS pair, open mode on a public address without ``--open``), or None."""
    try:
        auth = Authenticator.from_config(config)
    except (OSError, ValueError) as exc:
        return f"--jwt-secret/--jwt-public-key: {exc}"
    if not auth.enabled and not config.open and not is_loopback(config.host):
        return (
            f"no authentication is configured and --host {config.host} is not a loopback "
            "address: anyone who reaches it could act as any user. Set a key "
            "(--jwt-secret / CPC_JWT_SECRET, or --jwt-public-key), or pass --open "
            "(CPC_OPEN=1) to serve unauthenticated on purpose"
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        return "--tls-cert and --tls-key go together"
    if config.tls_cert and config.tls_key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls_cert, config.tls_key
            )
        except (OSError, ssl.SSLError) as exc:
            return f"--tls-cert/--tls-key: {exc}"
    from .hooks import hooks_problem

    return hooks_problem(config)
