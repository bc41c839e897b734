"""The CPC signaling protocol: messages and codec. No I/O."""

from ..errors import ProtocolError
from .codec import DEFAULT_MAX_CONTENT_CHARS, Decoder, encode
from .ids import canonical_uuid, is_uuid
from .info import MAX_INFO_BYTES, MAX_INFO_DEPTH, encode_info
from .messages import (
    MESSAGE_TYPES,
    Annotation,
    Comment,
    CursorUpdate,
    DocumentMessage,
    Error,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
    Message,
    Position,
    PresenceMessage,
    PresenceStatus,
    PresenceUpdate,
    Selection,
    SelectionUpdate,
    StoredMessage,
    TypingIndicator,
)

__all__ = [
    "DEFAULT_MAX_CONTENT_CHARS",
    "MAX_INFO_BYTES",
    "MAX_INFO_DEPTH",
    "MESSAGE_TYPES",
    "Annotation",
    "Comment",
    "CursorUpdate",
    "Decoder",
    "DocumentMessage",
    "Error",
    "ErrorCode",
    "JoinDocument",
    "LeaveDocument",
    "Message",
    "Position",
    "PresenceMessage",
    "PresenceStatus",
    "PresenceUpdate",
    "ProtocolError",
    "Selection",
    "SelectionUpdate",
    "StoredMessage",
    "TypingIndicator",
    "canonical_uuid",
    "encode",
    "encode_info",
    "is_uuid",
]
