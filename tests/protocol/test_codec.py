"""The codec: every valid message round-trips; anything else is a typed ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpc_signaling.protocol import (
    MAX_INFO_BYTES,
    MAX_INFO_DEPTH,
    MESSAGE_TYPES,
    CursorUpdate,
    Decoder,
    Error,
    ErrorCode,
    JoinDocument,
    Message,
    Position,
    ProtocolError,
    encode,
    encode_info,
)

DOC = "d0000000-0000-4000-8000-000000000000"
USER = "a0000000-0000-4000-8000-000000000000"
TS = "2023-01-01T00:00:00Z"
decoder = Decoder()

uuids = st.uuids().map(str)
upper_uuids = st.uuids().map(lambda u: str(u).upper())
coords = st.integers(min_value=0, max_value=2**31 - 1)
positions = st.builds(lambda line, col: {"line": line, "column": col}, coords, coords)
selections = st.builds(lambda a, b: {"start": a, "end": b}, positions, positions)
timestamps = st.sampled_from(
    [
        "2023-01-01T00:00:00Z",
        "2023-12-31T23:59:60.123456+05:30",
        "1999-02-28t10:00:00-08:00",
        "2026-11-25T22:24:48.5z",
    ]
)
texts = st.text(min_size=1, max_size=50)
# User info (an extension of JoinDocument): small JSON objects, well within 1 KiB.
info_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
infos = st.dictionaries(st.text(max_size=8), info_values, min_size=1, max_size=4)


def bodies() -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    base = {"document_id": st.one_of(uuids, upper_uuids), "user_id": uuids}
    return {
        "JoinDocument": st.fixed_dictionaries(base, optional={"info": infos}),
        "LeaveDocument": st.fixed_dictionaries(base),
        "PresenceUpdate": st.fixed_dictionaries(
            {
                **base,
                "cursor": positions,
                "selection": selections,
                "is_typing": st.booleans(),
                "timestamp": timestamps,
            }
        ),
        "CursorUpdate": st.fixed_dictionaries(
            {**base, "position": positions, "timestamp": timestamps}
        ),
        "SelectionUpdate": st.fixed_dictionaries(
            {**base, "selection": selections, "timestamp": timestamps}
        ),
        "TypingIndicator": st.fixed_dictionaries(
            {**base, "is_typing": st.booleans(), "timestamp": timestamps}
        ),
        "Annotation": st.fixed_dictionaries(
            {**base, "position": positions, "content": texts, "timestamp": timestamps}
        ),
        "Comment": st.fixed_dictionaries(
            {**base, "position": positions, "content": texts, "timestamp": timestamps}
        ),
        "PresenceStatus": st.fixed_dictionaries(
            {**base, "status": st.text(min_size=1, max_size=64), "timestamp": timestamps}
        ),
    }


def _tagged(name: str, body: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return body.map(lambda b: {name: b})


valid_frames = st.one_of(*[_tagged(name, body) for name, body in bodies().items()])


@given(valid_frames)
def test_valid_frames_decode_and_reencode_canonically(frame: dict[str, Any]) -> None:
    ((name, body),) = frame.items()
    message = decoder.decode(json.dumps(frame).encode())
    assert type(message).__name__ == name
    out = json.loads(encode(message))
    expected = {**body, "document_id": body["document_id"].lower()}
    assert out == {name: expected}
    assert decoder.decode(encode(message)) == message  # canonical form is a fixed point


@given(valid_frames, st.dictionaries(st.text(max_size=10), st.integers(), max_size=3))
def test_unknown_fields_are_ignored_and_never_relayed(
    frame: dict[str, Any], extra: dict[str, int]
) -> None:
    ((name, body),) = frame.items()
    extra = {k: v for k, v in extra.items() if k not in body}
    message = decoder.decode(json.dumps({name: {**body, **extra}}))
    assert set(json.loads(encode(message))[name]) == set(body)


def _check_only_protocol_error(data: bytes | str) -> None:
    try:
        decoder.decode(data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.PARSE_ERROR
        assert exc.message


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    _check_only_protocol_error(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)  # far beyond any int64/float
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
        | st.dictionaries(st.text(min_size=500, max_size=3000), children, max_size=2)  # long keys
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text nested ``depth`` deep: arrays and objects alternating."""
    opening = "".join("[" if n % 2 else '{"k":' for n in range(depth))
    closing = "".join("]" if n % 2 else "}" for n in reversed(range(depth)))
    return opening + leaf + closing


deep_json = st.integers(min_value=1, max_value=5000).map(nested)
huge_numbers = st.sampled_from(
    ["1" + "0" * 400, "-1e999", "1e999", "1" + "0" * 20, "0." + "0" * 500]
)


@given(valid_frames, st.data())
def test_mutated_frames_never_raise_anything_but_protocol_error(
    frame: dict[str, Any], data: st.DataObject
) -> None:
    ((name, body),) = frame.items()
    key = data.draw(st.sampled_from(sorted(body)))
    mutated = {name: {**body, key: data.draw(json_values)}}
    _check_only_protocol_error(json.dumps(mutated))
    dropped = {name: {k: v for k, v in body.items() if k != key}}
    if key == "info":  # the one optional field (an extension)
        assert decoder.decode(json.dumps(dropped))
        return
    with pytest.raises(ProtocolError) as info:
        decoder.decode(json.dumps(dropped))
    assert key in info.value.message  # the message names the missing field


@given(valid_frames, st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
def test_spliced_bytes_never_raise_anything_but_protocol_error(
    frame: dict[str, Any], at: int, junk: bytes
) -> None:
    raw = json.dumps(frame).encode()
    at = at % (len(raw) + 1)
    _check_only_protocol_error(raw[:at] + junk + raw[at:])
    _check_only_protocol_error(raw[:at])


@given(json_values)
def test_arbitrary_json_never_raises_anything_but_protocol_error(value: Any) -> None:
    _check_only_protocol_error(json.dumps(value))


@given(valid_frames, st.data())
def test_deep_nesting_and_huge_numbers_anywhere_are_parse_errors_or_ignored(
    frame: dict[str, Any], data: st.DataObject
) -> None:
    ((name, body),) = frame.items()
    value = data.draw(deep_json | huge_numbers)
    key = data.draw(st.sampled_from([*sorted(body), "unknown_field"]))
    raw = json.dumps({name: {k: "@" if k == key else v for k, v in body.items()} | {key: "@"}})
    _check_only_protocol_error(raw.replace('"@"', value))
    _check_only_protocol_error(value)
    _check_only_protocol_error(f'{{"{name}": {value}}}')


@pytest.mark.parametrize("depth", [1000, 3000, 100_000])
def test_deep_nesting_is_a_parse_error_never_a_recursion_error(depth: int) -> None:
    valid = body().decode()
    for text in (
        "[" * depth + "]" * depth,  # not an object
        '{"CursorUpdate": ' + "[" * depth + "]" * depth + "}",
        valid[:-2] + ', "extra": ' + nested(depth) + "}}",  # in an unknown field
        nested(depth),
    ):
        with pytest.raises(ProtocolError) as info:
            decoder.decode(text)
        assert info.value.code == ErrorCode.PARSE_ERROR
    assert decoder.decode(valid[:-2] + ', "extra": ' + nested(50) + "}}")  # shallow: ignored


def test_a_frame_nested_3000_deep_names_the_problem() -> None:
    with pytest.raises(ProtocolError) as info:
        decoder.decode('{"CursorUpdate": ' + nested(3000) + "}")
    assert "nested too deeply" in info.value.message


def body(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "document_id": DOC,
        "user_id": USER,
        "position": {"line": 1, "column": 2},
        "timestamp": TS,
    }
    fields.update(overrides)
    return json.dumps({"CursorUpdate": {k: v for k, v in fields.items() if v is not ...}}).encode()


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "object"),
        (b"{}", "exactly one"),
        (b'{"CursorUpdate": {}, "Comment": {}}', "exactly one"),
        (b'{"Bogus": {}}', "Bogus"),
        (b'{"CursorUpdate": null}', "CursorUpdate"),
        (b'{"Error": {"code": "X", "message": "y"}}', "Error"),
        (body(document_id="not-a-uuid"), "CursorUpdate.document_id"),
        (body(user_id=7), "CursorUpdate.user_id"),
        (body(document_id="d0000000000040008000000000000000"), "CursorUpdate.document_id"),
        (body(position={"line": -1, "column": 0}), "CursorUpdate.position.line"),
        (body(position={"line": 0, "column": 2**31}), "CursorUpdate.position.column"),
        (body(position={"line": 1.5, "column": 0}), "CursorUpdate.position.line"),
        (body(position={"line": True, "column": 0}), "CursorUpdate.position.line"),
        (body(position={"line": "1", "column": 0}), "CursorUpdate.position.line"),
        (body(position=...), "position"),
        (body(timestamp="2023-01-01"), "CursorUpdate.timestamp"),
        (body(timestamp="2023-01-01T00:00:00"), "CursorUpdate.timestamp"),
        (body(timestamp="2023-02-30T25:00:00Z"), "CursorUpdate.timestamp"),
        (body(timestamp=1672531200), "CursorUpdate.timestamp"),
        (body(timestamp="\uff12\uff10\uff12\uff13-01-01T00:00:00Z"), "CursorUpdate.timestamp"),
        (body(timestamp="2023-01-01T00:00:00Z\n"), "CursorUpdate.timestamp"),
    ],
)
def test_each_bad_input_is_a_parse_error_naming_the_field(frame: bytes, names: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decoder.decode(frame)
    assert info.value.code == ErrorCode.PARSE_ERROR
    assert names in info.value.message


def _stored(kind: str, content: Any) -> bytes:
    return json.dumps(
        {
            kind: {
                "document_id": DOC,
                "user_id": USER,
                "position": {"line": 0, "column": 0},
                "content": content,
                "timestamp": TS,
            }
        }
    ).encode()


@pytest.mark.parametrize("kind", ["Annotation", "Comment"])
def test_content_length_bounds(kind: str) -> None:
    small = Decoder(max_content_chars=5)
    assert small.decode(_stored(kind, "12345"))
    assert small.decode(_stored(kind, "ééééé"))  # characters, not bytes
    for bad in ("", "123456", None):
        with pytest.raises(ProtocolError) as info:
            small.decode(_stored(kind, bad))
        assert f"{kind}.content" in info.value.message


def test_status_length_bounds() -> None:
    def frame(value: str) -> bytes:
        return json.dumps(
            {
                "PresenceStatus": {
                    "document_id": DOC,
                    "user_id": USER,
                    "status": value,
                    "timestamp": TS,
                }
            }
        ).encode()

    assert decoder.decode(frame("x" * 64))
    for bad in ("", "x" * 65):
        with pytest.raises(ProtocolError) as info:
            decoder.decode(frame(bad))
        assert "PresenceStatus.status" in info.value.message


def test_timestamp_relayed_unchanged() -> None:
    ts = "2023-06-01T12:34:56.789012345+02:00"
    message = decoder.decode(body(timestamp=ts))
    assert json.loads(encode(message))["CursorUpdate"]["timestamp"] == ts


def test_uuids_canonical_lowercase() -> None:
    message = decoder.decode(body(document_id=DOC.upper(), user_id=USER.upper()))
    assert isinstance(message, CursorUpdate)
    assert (message.document_id, message.user_id) == (DOC, USER)


def test_client_side_decoder_accepts_error() -> None:
    frame = encode(Error(code="AUTH_ERROR", message="no"))
    assert Decoder(accept_errors=True).decode(frame) == Error(code="AUTH_ERROR", message="no")


def test_every_type_is_tagged_externally() -> None:
    assert len(MESSAGE_TYPES) == 10
    message: Message = CursorUpdate(
        document_id=DOC, user_id=USER, position=Position(line=0, column=0), timestamp=TS
    )
    assert json.loads(encode(message)) == {"CursorUpdate": msgspec.to_builtins(message)}


# -- user info (JoinDocument.info) -------------------------------------------------------


def join_frame(info: str) -> str:
    return f'{{"JoinDocument": {{"document_id": "{DOC}", "user_id": "{USER}", "info": {info}}}}}'


def test_info_is_decoded_and_sent_only_when_present() -> None:
    message = decoder.decode(join_frame('{"name": "Ada", "color": "#e91e63"}'))
    assert isinstance(message, JoinDocument)
    assert message.info == {"name": "Ada", "color": "#e91e63"}
    assert encode(JoinDocument(document_id=DOC, user_id=USER)) == (
        b'{"JoinDocument":{"document_id":"%s","user_id":"%s"}}' % (DOC.encode(), USER.encode())
    )
    for none in ("null", "{}"):  # no info: the seed's message
        assert decoder.decode(join_frame(none)) == JoinDocument(document_id=DOC, user_id=USER)


def test_info_canonical_encoding_sorts_keys_at_every_level() -> None:
    assert encode_info({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": None}}) == (
        b'{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}'
    )
    assert encode_info(None) == encode_info({}) == b""


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ("[]", "Expected `object | null`, got `array`"),
        ('"Ada"', "Expected `object | null`, got `str`"),
        ("7", "Expected `object | null`, got `int`"),
        ('{"name": "' + "x" * MAX_INFO_BYTES + '"}', f"at most {MAX_INFO_BYTES} bytes"),
        ('{"a": ' * 17 + "1" + "}" * 17, f"nested at most {MAX_INFO_DEPTH} deep"),
        ('{"a": [' + "[" * 20 + "]" * 20 + "]}", f"nested at most {MAX_INFO_DEPTH} deep"),
        ('{"n": 1e999}', "JoinDocument.info"),
    ],
)
def test_bad_info_is_a_parse_error_naming_the_field(info: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decoder.decode(join_frame(info))
    assert raised.value.code == ErrorCode.PARSE_ERROR
    assert raised.value.message.startswith("JoinDocument.info")
    assert fragment in raised.value.message


def test_info_bound_is_on_the_canonical_encoding() -> None:
    # Whitespace the client adds does not count; exactly 1024 bytes canonical is fine.
    name = "x" * (MAX_INFO_BYTES - len('{"n":""}'))
    assert len(encode_info({"n": name})) == MAX_INFO_BYTES
    spaced = join_frame('{  "n"  :  "' + name + '"  }')
    assert decoder.decode(spaced) == JoinDocument(document_id=DOC, user_id=USER, info={"n": name})
    with pytest.raises(ProtocolError):
        decoder.decode(join_frame('{"n": "' + name + 'x"}'))


def test_info_on_other_messages_is_an_unknown_field() -> None:
    raw = json.loads(body())
    raw["CursorUpdate"]["info"] = {"name": "Ada"}
    message = decoder.decode(json.dumps(raw))
    assert b"info" not in encode(message)
