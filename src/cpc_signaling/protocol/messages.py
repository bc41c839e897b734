"""The ten CPC signaling messages as frozen, slotted msgspec structs.

Field constraints that never change (UUID shape, coordinate range, timestamp
shape, status length) live in the types, so msgspec checks them in C while it
decodes. Limits an operator can configure (content length) are checked by the
codec after decoding.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

# \Z, not $: `$` also matches before a trailing newline, and "<victim's id>\n" would
# pass for a different user that a UI may display as the victim.
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
# RFC 3339 date-time ("T" or "t", offset or "Z"/"z"), with ranges checked per field.
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])\Z"
)
# ([0-9], not \d: \d would admit non-ASCII digits, which RFC 3339 does not.)

UUIDStr = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Coordinate = Annotated[int, msgspec.Meta(ge=0, lt=2**31)]
Timestamp = Annotated[str, msgspec.Meta(pattern=TIMESTAMP_PATTERN)]
Status = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Content = Annotated[str, msgspec.Meta(min_length=1)]


class Position(msgspec.Struct, frozen=True, gc=False):
    line: Coordinate
    column: Coordinate


class Selection(msgspec.Struct, frozen=True, gc=False):
    start: Position
    end: Position


class JoinDocument(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """``info`` (an extension): who the user is, a JSON object (``protocol.info``).

    On the wire only when the user has info: a seed-only peer sees the seed's
    message. The codec checks its bounds; the server sends it canonical.
    """

    document_id: UUIDStr
    user_id: UUIDStr
    info: dict[str, Any] | None = None


class LeaveDocument(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr


class PresenceUpdate(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    cursor: Position
    selection: Selection
    is_typing: bool
    timestamp: Timestamp


class CursorUpdate(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    position: Position
    timestamp: Timestamp


class SelectionUpdate(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    selection: Selection
    timestamp: Timestamp


class TypingIndicator(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    is_typing: bool
    timestamp: Timestamp


class Annotation(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    position: Position
    content: Content
    timestamp: Timestamp


class Comment(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    position: Position
    content: Content
    timestamp: Timestamp


class PresenceStatus(msgspec.Struct, frozen=True, gc=False):
    document_id: UUIDStr
    user_id: UUIDStr
    status: Status
    timestamp: Timestamp


class Error(msgspec.Struct, frozen=True, gc=False):
    code: str
    message: str


DocumentMessage = (
    JoinDocument
    | LeaveDocument
    | PresenceUpdate
    | CursorUpdate
    | SelectionUpdate
    | TypingIndicator
    | Annotation
    | Comment
    | PresenceStatus
)
"""Every message that names a document and a user: what a client may send."""

Message = DocumentMessage | Error

PresenceMessage = PresenceUpdate | CursorUpdate | SelectionUpdate | TypingIndicator | PresenceStatus
"""Messages that set a user's presence in force; conflatable for slow readers."""

StoredMessage = Annotation | Comment
"""Messages the document keeps for later joiners."""

MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    JoinDocument,
    LeaveDocument,
    PresenceUpdate,
    CursorUpdate,
    SelectionUpdate,
    TypingIndicator,
    Error,
    Annotation,
    Comment,
    PresenceStatus,
)


class ErrorCode:
    """The protocol's error codes (docs/protocol.md, errors)."""

    PARSE_ERROR: Final = "PARSE_ERROR"
    AUTH_ERROR: Final = "AUTH_ERROR"
    DOCUMENT_ERROR: Final = "DOCUMENT_ERROR"
    CONNECTION_ERROR: Final = "CONNECTION_ERROR"
