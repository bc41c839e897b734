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
        None, "redis://HOST:PORT/DB makes instances one service (default: in-memory state)"
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
        None, "HS256 secret: connections must present a JWT (default: open, no authentication)"
    )
    jwt_public_key: str | None = _opt(
        None, "PEM file of an RSA (RS256) or EC (ES256) public key verifying client JWTs"
    )
    jwt_audience: str | None = _opt(None, "required `aud` claim of client JWTs")
    jwt_issuer: str | None = _opt(None, "required `iss` claim of client JWTs")
    jwt_leeway: float = _opt(0.0, "seconds of clock skew allowed on `exp`/`nbf`")
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
    log_level: str = _opt("info", "debug, info, warning or error")
    log_format: str = _opt("text", "text or json")
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
        "t=UNIX,v1=HEX over 'UNIX.BODY')",
    )

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
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        return cls(**values)


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


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = _base_type(f)
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return kind(raw)


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
            parser.add_argument(flag_name(f.name), dest=f.name, type=kind, default=None, help=text)
