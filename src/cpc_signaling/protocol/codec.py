"""Bytes in, typed message or :class:`ProtocolError` out; typed message in, bytes out.

The wire format is one JSON object per text frame, externally tagged:
``{"CursorUpdate": {...}}``. Decoding is two msgspec passes: the outer object
into ``{name: Raw}`` (the inner value is only skipped, not parsed), then the
inner value into the struct its name selects. Every failure, whatever its
cause, surfaces as :class:`ProtocolError` with a message that names the field:
that includes JSON nested deeper than the decoder's recursion allows (msgspec
raises ``RecursionError`` for it), so no frame can escape as an exception.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from ..errors import ProtocolError
from .info import encode_info
from .messages import (
    MESSAGE_TYPES,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
    Annotation,
    Comment,
    DocumentMessage,
    Error,
    ErrorCode,
    JoinDocument,
    Message,
)

DEFAULT_MAX_CONTENT_CHARS: Final = 10_000

_TYPE_NAMES: Final = ", ".join(t.__name__ for t in MESSAGE_TYPES)
_PATTERN_MEANINGS: Final = (
    (UUID_PATTERN, "a UUID string (8-4-4-4-12 hex digits)"),
    (TIMESTAMP_PATTERN, "an RFC 3339 date-time with an offset or `Z`"),
)
_TOO_DEEP: Final = "JSON nested too deeply"
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _parse_error(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.PARSE_ERROR, message)


def _short(text: str, limit: int = 64) -> str:
    """A client-chosen name, cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


def _describe(exc: msgspec.MsgspecError, type_name: str) -> str:
    """Rewrite msgspec's ``... - at `$.a.b``` as ``Type.a.b: ...``."""
    text = str(exc)
    for pattern, meaning in _PATTERN_MEANINGS:
        text = text.replace(f"`str` matching regex {pattern!r}", meaning)
    match = _PATH.search(text)
    if match is None:
        return f"{type_name}: {text}"
    return f"{type_name}{match['path']}: {text[: match.start()]}"


def encode(message: Message) -> bytes:
    """Encode a message as its externally tagged JSON object."""
    return b'{"' + type(message).__name__.encode() + b'":' + msgspec.json.encode(message) + b"}"


class Decoder:
    """Decodes frames into messages; reusable, one per process is enough.

    ``accept_errors`` is for clients: a server sends ``Error``, a client may not.
    """

    __slots__ = ("_accept_errors", "_inner", "_max_content_chars", "_outer")

    def __init__(
        self, *, max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS, accept_errors: bool = False
    ) -> None:
        self._max_content_chars = max_content_chars
        self._accept_errors = accept_errors
        self._outer = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._inner: dict[str, msgspec.json.Decoder[Message]] = {
            t.__name__: msgspec.json.Decoder(t) for t in MESSAGE_TYPES
        }

    def decode(self, data: bytes | str) -> Message:
        """Decode one frame. Raises :class:`ProtocolError` and nothing else."""
        try:
            outer = self._outer.decode(data)
        except RecursionError:
            raise _parse_error(_TOO_DEEP) from None
        except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: invalid UTF-8
            text = str(exc) if isinstance(exc, msgspec.MsgspecError) else "invalid UTF-8"
            if text.startswith("Expected `object`, got"):
                text = (
                    "a message must be a JSON object, got" + text[len("Expected `object`, got") :]
                )
            raise _parse_error(text) from None
        if len(outer) != 1:
            # Keys are the client's: shortened, and a few only (an error stays small).
            names = sorted(outer)
            keys = ", ".join(_short(k) for k in names[:5]) or "none"
            if len(names) > 5:
                keys += f" and {len(names) - 5} more"
            raise _parse_error(
                f"a message must have exactly one type key ({_TYPE_NAMES}); got {keys}"
            )
        ((name, raw),) = outer.items()
        decoder = self._inner.get(name)
        if decoder is None:
            raise _parse_error(
                f"unknown message type `{_short(name)}`; expected one of {_TYPE_NAMES}"
            )
        try:
            message = decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise _parse_error(_describe(exc, name)) from None
        except ValueError:
            raise _parse_error(f"{name}: invalid UTF-8") from None
        except RecursionError:
            raise _parse_error(f"{name}: {_TOO_DEEP}") from None
        if isinstance(message, Error):
            if self._accept_errors:
                return message
            raise _parse_error("Error: only the server sends Error messages")
        return self._post_validate(message)

    def decode_document_message(self, data: bytes | str) -> DocumentMessage:
        """Decode a client's frame: anything but ``Error``."""
        message = self.decode(data)
        assert not isinstance(message, Error)  # refused above unless accept_errors
        return message

    def _post_validate(self, message: DocumentMessage) -> DocumentMessage:
        if (
            isinstance(message, Annotation | Comment)
            and len(message.content) > self._max_content_chars
        ):
            raise _parse_error(
                f"{type(message).__name__}.content: longer than "
                f"{self._max_content_chars} characters"
            )
        if type(message) is JoinDocument and message.info is not None:
            try:
                has_info = bool(encode_info(message.info))
            except ValueError as exc:
                raise _parse_error(f"JoinDocument.info: {exc}") from None
            if not has_info:  # {}: no info
                message = msgspec.structs.replace(message, info=None)
        doc, user = message.document_id, message.user_id
        if not (doc.islower() and user.islower()):
            # Canonical form: lowercase. (A UUID of digits only is not "islower".)
            doc_l, user_l = doc.lower(), user.lower()
            if doc_l != doc or user_l != user:
                message = msgspec.structs.replace(message, document_id=doc_l, user_id=user_l)
        return message
