"""Hypothesis strategies for hostile frames: random, structurally mutated and byte-mutated."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from cpc_signaling.protocol import Decoder, ErrorCode, ProtocolError, encode

TYPES = (
    "JoinDocument",
    "LeaveDocument",
    "PresenceUpdate",
    "CursorUpdate",
    "SelectionUpdate",
    "TypingIndicator",
    "Annotation",
    "Comment",
    "PresenceStatus",
    "Error",
)

uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
coords = st.integers(min_value=0, max_value=2**31 - 1)
positions = st.fixed_dictionaries({"line": coords, "column": coords})
selections = st.fixed_dictionaries({"start": positions, "end": positions})
timestamps = st.sampled_from(
    ["2023-01-01T00:00:00Z", "2024-02-29T23:59:60.123+05:30", "1999-12-31t00:00:00z"]
) | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
texts = st.text(min_size=1, max_size=50)

_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "JoinDocument": {},
    "LeaveDocument": {},
    "PresenceUpdate": {
        "cursor": positions,
        "selection": selections,
        "is_typing": st.booleans(),
        "timestamp": timestamps,
    },
    "CursorUpdate": {"position": positions, "timestamp": timestamps},
    "SelectionUpdate": {"selection": selections, "timestamp": timestamps},
    "TypingIndicator": {"is_typing": st.booleans(), "timestamp": timestamps},
    "Annotation": {"position": positions, "content": texts, "timestamp": timestamps},
    "Comment": {"position": positions, "content": texts, "timestamp": timestamps},
    "PresenceStatus": {"status": st.text(min_size=1, max_size=64), "timestamp": timestamps},
}


_INFO = st.dictionaries(
    st.text(max_size=8), st.text(max_size=20) | st.integers() | st.booleans(), max_size=4
)
_OPTIONAL: dict[str, dict[str, st.SearchStrategy[Any]]] = {"JoinDocument": {"info": _INFO}}


def _message(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = {"document_id": uuids, "user_id": uuids, **_FIELDS[kind]}
    body = st.fixed_dictionaries(fields, optional=_OPTIONAL.get(kind, {}))
    return st.fixed_dictionaries({kind: body})


valid_messages = st.one_of([_message(kind) for kind in _FIELDS])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(10**400), max_value=10**400)  # huge numbers
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.dictionaries(st.text(min_size=500, max_size=3000), inner, max_size=2)  # long keys
    ),
    max_leaves=12,
)


def _nested(depth: int) -> str:
    """JSON text nested ``depth`` deep (arrays and objects alternating)."""
    opening = "".join("[" if n % 2 else '{"k":' for n in range(depth))
    closing = "".join("]" if n % 2 else "}" for n in reversed(range(depth)))
    return opening + "0" + closing


_NUMBER_TEXTS = ("1" + "0" * 400, "-1e999", "1e999", "1" + "0" * 20, "0." + "0" * 500 + "1")


@st.composite
def hostile_values(draw: st.DrawFn) -> str:
    """JSON text of a value no decoder should choke on: deep nesting (up to 3000, about
    6 KB: past the decoder's recursion limit) or numbers far beyond any float/int64."""
    if draw(st.booleans()):
        return _nested(draw(st.integers(min_value=1, max_value=3000)))
    return draw(st.sampled_from(_NUMBER_TEXTS))


@st.composite
def hostile_mutants(draw: st.DrawFn) -> str:
    """A valid message with one field (or an added one) replaced by a hostile value."""
    message = draw(valid_messages)
    ((kind, body),) = message.items()
    key = draw(st.sampled_from(sorted(body)) | st.text(min_size=1, max_size=3000))
    body[key] = "@HOSTILE@"
    text = json.dumps(message)
    value = draw(hostile_values())
    if draw(st.booleans()):
        return text.replace('"@HOSTILE@"', value)
    return f'{{"{kind}": {value}}}'  # the whole body


@st.composite
def structural_mutants(draw: st.DrawFn) -> str:
    """A valid message with one structural change: a field replaced, dropped, added, renamed."""
    message = draw(valid_messages)
    ((kind, body),) = message.items()
    op = draw(st.integers(min_value=0, max_value=5))
    keys = sorted(body)
    if op == 0 and keys:
        body[draw(st.sampled_from(keys))] = draw(json_values)
    elif op == 1 and keys:
        del body[draw(st.sampled_from(keys))]
    elif op == 2:
        body[draw(st.text(max_size=10))] = draw(json_values)
    elif op == 3:
        message = {draw(st.sampled_from(TYPES) | st.text(max_size=12)): body}
    elif op == 4:
        message[draw(st.sampled_from(TYPES))] = draw(json_values)
    else:
        message = {kind: draw(json_values)}
    return json.dumps(message)


@st.composite
def byte_mutants(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, inserted, deleted or cut off."""
    data = bytearray(json.dumps(draw(valid_messages)).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            break
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        op = draw(st.integers(min_value=0, max_value=3))
        if op == 0:
            data[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == 2:
            del data[i]
        else:
            del data[i:]
    return bytes(data)


any_frames: st.SearchStrategy[bytes | str] = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200),
    json_values.map(json.dumps),
    valid_messages.map(json.dumps),
    structural_mutants(),
    byte_mutants(),
    hostile_mutants(),
)
"""Anything a client could send in a frame (bytes: its payload as is)."""

text_frames: st.SearchStrategy[str] = any_frames.map(
    lambda f: f.decode("utf-8", "replace") if isinstance(f, bytes) else f
)
"""What can travel in a WebSocket text frame (valid UTF-8)."""


def check_decoder(decoder: Decoder, data: bytes | str) -> None:
    """The decoder's contract: a message that re-encodes stably, or a ProtocolError."""
    try:
        message = decoder.decode(data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.PARSE_ERROR
        assert isinstance(exc.message, str) and 0 < len(exc.message) < 2000
        return
    again = decoder.decode(encode(message))
    assert again == message
