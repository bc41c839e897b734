"""All configuration in one frozen object, built from flags and ``CPC_*`` variables.

Each field is one option: ``--max-message-bytes`` on the command line,
``CPC_MAX_MESSAGE_BYTES`` in the environment (a flag wins over a variable,
both over the default). Add an option by adding a field with ``help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, slots=True)
class Config:
    # network
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8765, "port to listen on; 0 picks a free one")
    # backend
    redis_url: str | None = _opt(
        None,
        "redis://HOST:PORT/DB makes instances one service (default: in-memory state); "
        "several, comma-separated: documents are spread over them",
    )
    redis_prefix: str = _opt("cpc", "prefix of every Redis key and channel")
    instance_id: str | None = _opt(None, "this instance's id (default: random)")
    heartbeat_interval: float = _opt(
        2.0, "seconds between this instance's liveness heartbeats in Redis"
    )
    instance_timeout: float = _opt(
        6.0, "seconds without a heartbeat after which an instance is declared dead"
    )
    document_ttl: float = _opt(
        7 * 24 * 3600.0, "seconds an idle document's Redis keys live (annotations, comments)"
    )
    redis_flush_interval: float = _opt(
        0.002,
        "seconds between two flushes of presence to Redis under load (one script for all "
        "documents); joins, leaves, annotations and comments never wait",
    )
    redis_linger: float = _opt(
        30.0,
        "seconds a document stays followed in Redis after its last local member left, so "
        "that a join soon after costs no reload of its history (0: let go at once)",
    )
    redis_strict: bool = _opt(
        False, "refuse to start when Redis may evict keys (maxmemory-policy not noeviction)"
    )
    # limits
    max_message_bytes: int = _opt(65536, "largest accepted frame; larger closes with 1009")
    max_content_chars: int = _opt(10_000, "longest Annotation/Comment content")
    max_documents_per_connection: int = _opt(100, "documents one connection may join")
    max_members_per_document: int = _opt(1000, "member connections one document may have")
    max_stored_per_document: int = _opt(
        1000, "annotations and comments kept per document (oldest dropped first)"
    )
    max_stored_bytes_per_document: int = _opt(
        4 << 20,
        "bytes of annotations and comments kept per document, on every backend "
        "(oldest dropped first)",
    )
    max_documents: int = _opt(
        100_000, "documents kept in memory; idle ones are dropped least recently active first"
    )
    max_stored_bytes: int = _opt(
        256 << 20,
        "bytes of annotations and comments kept in memory over all documents (memory "
        "backend); when full, idle documents go first, then a user over a fair share "
        "(this budget over the users holding some) gets CONNECTION_ERROR, and one within "
        "it displaces the oldest of whoever holds the most",
    )
    error_limit: int = _opt(20, "errors a connection may cause within --error-window")
    error_window: float = _opt(10.0, "seconds over which --error-limit counts")
    outbox_max_bytes: int = _opt(
        1 << 20,
        "bytes of non-conflatable frames (joins, leaves, comments) a slow reader may "
        "have pending before it is closed with 1013",
    )
    # security (docs/security.md)
    jwt_secret: str | None = _opt(
        None,
        "HS256 secret: connections must present a JWT (default: open, no authentication); "
        "an empty secret is an error",
        keep_empty=True,
    )
    jwt_public_key: str | None = _opt(
        None,
        "PEM file of an RSA (RS256) or EC (ES256) public key verifying client JWTs",
        keep_empty=True,
    )
    jwt_audience: str | None = _opt(None, "required `aud` claim of client JWTs")
    jwt_issuer: str | None = _opt(None, "required `iss` claim of client JWTs")
    jwt_leeway: float = _opt(0.0, "seconds of clock skew allowed on `exp`/`nbf`")
    jwt_max_age: float = _opt(
        0.0,
        "refuse tokens whose `exp` is more than this many seconds away (0: no limit)",
    )
    open: bool = _opt(
        False,
        "serve without authentication (no JWT key) on an address other than loopback; "
        "without a key and without --open the server only listens on loopback",
    )
    allowed_origins: str = _opt(
        "*", "comma list of browser origins allowed to connect (scheme://host[:port]) or *"
    )
    rate_limit: float = _opt(200.0, "messages per second one connection may send; 0 disables")
    rate_burst: int = _opt(400, "messages one connection may send at once above --rate-limit")
    stored_rate_limit: float = _opt(
        10.0,
        "Annotation and Comment messages per second one connection may send, on top of "
        "--rate-limit; 0 disables (bulk writers use the HTTP API)",
    )
    stored_rate_burst: int = _opt(
        20, "Annotations and Comments one connection may send at once above --stored-rate-limit"
    )
    max_connections: int = _opt(10_000, "WebSocket connections this process serves; 0: no cap")
    max_connections_per_user: int = _opt(
        100, "connections one user_id may hold on this process; 0: no cap"
    )
    max_handshakes: int = _opt(
        1000,
        "connections this process holds that are not (yet) WebSockets: HTTP requests and "
        "handshakes in progress, idle keep-alive; past it new ones get 503; 0: no cap",
    )
    handshake_timeout: float = _opt(
        10.0,
        "seconds a client may take to send a complete HTTP request (the WebSocket "
        "handshake included), and an idle keep-alive connection may stay; then it is closed",
    )
    tls_cert: str | None = _opt(None, "PEM certificate chain: serve wss:// and https://")
    tls_key: str | None = _opt(None, "PEM private key of --tls-cert")
    # timeouts
    ping_interval: float = _opt(20.0, "seconds of silence before the server pings; 0 disables")
    ping_timeout: float = _opt(20.0, "seconds to wait for the pong before closing")
    drain_timeout: float = _opt(2.0, "seconds SIGTERM/SIGINT may take to announce leaves")
    # operations
    log_level: str = _opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _opt("text", "text or json", choices=("text", "json"))
    demo: bool = _opt(
        True, "serve the live demo page at / (the JS client at /client.js is always served)"
    )
    api_key: str | None = _opt(
        None,
        "enables the HTTP API under /api/ (publish, presence, disconnect) for callers "
        "that send 'Authorization: Bearer KEY'; without a key the API is off (404)",
    )
    # hooks for the application (docs/hooks.md)
    join_webhook: str | None = _opt(
        None,
        "URL the server POSTs {user_id, document_id, claims} to before a connection joins a "
        "document: 2xx allows, 403 denies (AUTH_ERROR with the body's reason)",
    )
    join_webhook_timeout: float = _opt(3.0, "seconds to wait for the join webhook's answer")
    join_webhook_cache: float = _opt(
        30.0, "seconds an answer (allow or deny) is reused for the same user and document; 0: none"
    )
    join_webhook_cache_size: int = _opt(
        10_000, "answers the join cache keeps; the least recently used go first"
    )
    join_webhook_fail_open: bool = _opt(
        False,
        "allow the join when the join webhook gives no answer (timeout, connection error, "
        "a status other than 2xx/403); by default it is refused with CONNECTION_ERROR",
    )
    event_webhook: str | None = _opt(
        None, "URL the server POSTs JSON batches of join, leave, annotation and comment events to"
    )
    event_webhook_timeout: float = _opt(
        10.0, "seconds one delivery to the event webhook may take before it is retried"
    )
    event_webhook_queue: int = _opt(
        10_000, "events waiting for delivery; when full, new events are dropped (counted, logged)"
    )
    event_webhook_batch: int = _opt(100, "most events in one delivery")
    event_webhook_backoff_max: float = _opt(
        60.0, "longest pause between retries of a failed delivery (exponential from 0.5 s)"
    )
    webhook_secret: str | None = _opt(
        None,
        "key signing every webhook request with HMAC-SHA256 (header X-CPC-Signature: "
        "t=UNIX,v1=HEX over 'UNIX.BODY'); an empty key is an error",
        keep_empty=True,
    )

    def __post_init__(self) -> None:
        problem = _field_problem(self)
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Config:
        """Parse ``argv`` (flags) over ``env`` (``CPC_*`` variables) over the defaults."""
        parser = argparse.ArgumentParser(prog="cpc-signaling serve", add_help=True)
        add_arguments(parser)
        return cls.from_namespace(parser.parse_args(argv), env)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            given = getattr(ns, f.name, None)
            if given is not None:
                values[f.name] = given
                continue
            raw = env.get(env_name(f.name))
            if raw is not None and (raw != "" or f.metadata.get("keep_empty")):
                values[f.name] = _convert(f, raw)
        return cls(**values)


# Shorter API keys can be guessed; tokens of a 32-byte secret cannot be forged.
MIN_API_KEY_CHARS = 32


def _field_problem(config: Config) -> str | None:
    """Why a value cannot work, whoever builds the Config (flags, variables, an embedder)."""
    if config.jwt_secret == "":
        return (
            "--jwt-secret / CPC_JWT_SECRET is empty: give a secret (at least 32 random bytes), "
            "or leave it unset to run open (development only)"
        )
    if config.jwt_public_key == "":
        return "--jwt-public-key / CPC_JWT_PUBLIC_KEY is empty: give a PEM file, or leave it unset"
    if config.api_key is not None and len(config.api_key) < MIN_API_KEY_CHARS:
        return (
            f"--api-key / CPC_API_KEY must be at least {MIN_API_KEY_CHARS} characters "
            f"(got {len(config.api_key)}): e.g. openssl rand -base64 33"
        )
    if config.jwt_max_age < 0:
        return "--jwt-max-age must be >= 0 (0: no limit)"
    if not 0 <= config.port <= 65535:
        return f"--port {config.port}: expected 0 to 65535"
    return None


def env_name(name: str) -> str:
    return "CPC_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(f: dataclasses.Field[Any]) -> type:
    text = str(f.type)
    for candidate in (bool, int, float, str):
        if text.startswith(candidate.__name__):
            return candidate
    return str


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    """A ``CPC_*`` value as the field's type; ValueError naming the variable otherwise."""
    kind = _base_type(f)
    name = env_name(f.name)
    if kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(f"{name}={raw!r}: expected true or false (1/0, yes/no, on/off)")
        return word in _TRUE
    try:
        value = kind(raw)
    except ValueError:
        article = "an" if kind is int else "a"
        what = {int: "integer", float: "number"}.get(kind, kind.__name__)
        raise ValueError(f"{name}={raw!r}: expected {article} {what}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are None so the environment can fill in."""
    for f in dataclasses.fields(Config):
        kind = _base_type(f)
        text = f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default!r})"
        if kind is bool:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=_flag_type(kind, f.metadata.get("choices")),
                default=None,
                help=text,
            )


def _flag_type(kind: type, choices: Sequence[str] | None) -> Any:
    """The flag's converter: argparse turns its ValueError/ArgumentTypeError into one line."""

    def convert(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"{raw!r}: expected {what}") from None
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(f"{raw!r}: expected one of {', '.join(choices)}")
        return value

    convert.__name__ = kind.__name__
    return convert
