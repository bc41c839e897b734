"""Logging set-up: text for people, JSON lines for log pipelines; never a token.

The server's own lines never carry a token or a key. Libraries may: the HTTP
server's lines about a malformed request quote the raw request line
(``GET /ws?token=...``), uvicorn logs each WebSocket handshake with its query
string at INFO. :class:`RedactTokens` rewrites any record that carries
something shaped like a token (``token=``, ``cpc.token.``, ``Bearer ...``, a
JWT); it sits on the handler :func:`setup_logging` installs (every line of a
``cpc-signaling serve`` process) and, via :func:`install_filters`, on the
aiohttp and uvicorn loggers whatever handlers an embedding application uses.

aiohttp logs a malformed request (any client can send one) at ERROR with a
traceback; :func:`http_logger` is the logger the aiohttp transport gives its
HTTP server instead, which turns those into one INFO line without the request.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# What a token looks like wherever it may travel: a query parameter, the
# subprotocol, an Authorization header, or a bare JWT (its header is base64 of '{"').
_PATTERNS = (
    (re.compile(r"(?i)([?&;]token=)[^&\s\"'<>]+"), r"\1[redacted]"),
    (re.compile(r"(cpc\.token\.)[^\s,\"'<>\]]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[^\s,\"'<>]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)
_HINTS = ("token", "earer", "eyJ")


def redact(text: str) -> str:
    """``text`` with every token-shaped part replaced."""
    if not any(hint in text for hint in _HINTS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactTokens(logging.Filter):
    """Rewrites a record whose message or traceback carries a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: let the handler report it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _BadRequests(logging.Filter):
    """aiohttp's "Error handling request" for a request it could not parse (the
    client's fault: any client can send one) becomes one INFO line, without the
    traceback that quotes the raw request."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = getattr(exc, "code", None)
        if exc is None or not isinstance(status, int) or not 400 <= status < 500:
            return True  # a server error: kept as it is (redacted)
        level = min(record.levelno, logging.INFO)  # never raised (garbage is DEBUG)
        if not logging.getLogger(record.name).isEnabledFor(level):
            return False
        detail = str(getattr(exc, "message", "") or "").strip().splitlines()
        reason = detail[0].split(": b'")[0].split(': b"')[0].rstrip(":. ") if detail else ""
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "bad HTTP request from %s: %d %s"
        record.args = (remote, status, redact(reason) or type(exc).__name__)
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.exc_info = None
        record.exc_text = None
        return True


_FILTERED = (
    "aiohttp.access",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "aiohttp.internal",
    "uvicorn.error",
    "uvicorn.access",
    "cpc_signaling.http",
)
_REDACT = RedactTokens()


def install_filters() -> None:
    """Put :class:`RedactTokens` on the HTTP servers' loggers (idempotent)."""
    for name in _FILTERED:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def http_logger() -> logging.Logger:
    """The logger the aiohttp transport's HTTP server reports to."""
    logger = logging.getLogger("cpc_signaling.http")
    if not any(isinstance(f, _BadRequests) for f in logger.filters):
        logger.addFilter(_BadRequests())
    install_filters()
    return logger


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("document_id", "user_id", "connection_id", "instance_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_REDACT)  # every line of the process, whoever logs it
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    install_filters()
