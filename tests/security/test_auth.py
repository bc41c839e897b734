"""JWT authentication and authorization over real sockets (docs/security.md, docs/protocol.md)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpc_signaling.client import Client, JoinError
from cpc_signaling.errors import AuthError
from cpc_signaling.protocol import CursorUpdate, ErrorCode, JoinDocument, LeaveDocument
from cpc_signaling.server.auth import Authenticator, OriginPolicy, bearer_token

from ..helpers import TIMEOUT, new_id, receive_until, running_server, spawn_server
from .support import (
    SECRET,
    TS,
    connect_and_collect,
    ec_keypair,
    frame,
    healthy,
    join_raw,
    read_json,
    rsa_keypair,
    token,
)


async def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def expect_refused(url: str, fragment: str, **kwargs: Any) -> None:
    outcome = await connect_and_collect(url, **kwargs)
    assert outcome.close_code == 1008, outcome
    assert len(outcome.errors) == 1, outcome
    assert outcome.errors[0]["code"] == ErrorCode.AUTH_ERROR
    assert fragment in outcome.errors[0]["message"], outcome.errors[0]


@pytest.mark.parametrize(
    ("make_token", "fragment"),
    [
        (lambda u: None, "missing token"),
        (lambda u: "", "missing token"),
        (lambda u: "not-a-jwt", "malformed token"),
        (lambda u: "a.b.c", "malformed token"),
        (lambda u: token(u, secret="another-secret-of-a-decent-length-0123456789"), "signature"),
        (lambda u: token(u, ttl=-10), "expired"),
        (lambda u: token(u, now=time.time() - 3600, ttl=60), "expired"),
        (lambda u: token(u, audience="someone-else"), "audience"),
        (lambda u: token("not-a-uuid"), "`sub`"),
        (lambda u: token(u + "\n"), "`sub`"),
        (lambda u: token(u, docs=["nope"]), "`docs`"),
        (lambda u: token(u, extra={"docs": "a-string"}), "`docs`"),
        (lambda u: jwt.encode({"sub": u}, SECRET, algorithm="HS256"), "`exp`"),
        (lambda u: jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256"), "`sub`"),
        (
            lambda u: jwt.encode({"sub": u, "exp": time.time() + 60}, "", algorithm="none"),
            "algorithm",
        ),
        (
            lambda u: jwt.encode({"sub": u, "exp": time.time() + 60}, SECRET, algorithm="HS512"),
            "algorithm",
        ),
        (lambda u: token(u, now=time.time() + 600), "not valid yet"),
        (lambda u: "x" * 5000, "too long"),
    ],
    ids=[
        "absent",
        "empty",
        "not-a-jwt",
        "three-garbage-parts",
        "wrong-signature",
        "expired",
        "long-expired",
        "wrong-audience",
        "sub-not-uuid",
        "sub-trailing-newline",
        "docs-not-uuids",
        "docs-not-list",
        "no-exp",
        "no-sub",
        "alg-none",
        "alg-hs512",
        "issued-in-future",
        "oversized",
    ],
)
async def test_bad_tokens_get_auth_error_then_1008(make_token: Any, fragment: str) -> None:
    async with running_server(jwt_secret=SECRET) as server:
        value = make_token(new_id())
        params = None if value is None else {"token": value}
        await expect_refused(server.url, fragment, params=params)
        # The same server still serves a good token afterwards.
        user = new_id()
        async with Client(server.url, user, token=token(user), reconnect=False) as client:
            assert (await client.join(new_id()))[-1].user_id == user  # type: ignore[union-attr]


async def test_missing_audience_when_one_is_required() -> None:
    async with running_server(jwt_secret=SECRET, jwt_audience="cpc") as server:
        await expect_refused(server.url, "aud", params={"token": token(new_id())})
        user = new_id()
        good = token(user, audience="cpc")
        async with Client(server.url, user, token=good, reconnect=False) as client:
            await client.join(new_id())


async def test_issuer_and_audience_accepted_when_right() -> None:
    async with running_server(
        jwt_secret=SECRET, jwt_audience="cpc", jwt_issuer="https://auth.example"
    ) as server:
        user = new_id()
        good = token(user, audience="cpc", issuer="https://auth.example")
        async with Client(server.url, user, token=good, reconnect=False) as client:
            await client.join(new_id())
        wrong = token(user, audience="cpc", issuer="https://evil.example")
        await expect_refused(server.url, "issuer", params={"token": wrong})
        await expect_refused(server.url, "iss", params={"token": token(user, audience="cpc")})


async def test_token_binds_the_user_query_and_bearer_header() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        user, doc = new_id(), new_id()
        # Query string.
        async with Client(server.url, user, token=token(user), reconnect=False) as a:
            await a.join(doc)
        # Authorization header, upper-case UUID in `sub` (canonicalised).
        upper = token(user.upper())
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.url, headers={"Authorization": f"Bearer {upper}"}) as ws,
        ):
            await ws.send_str(frame("JoinDocument", document_id=doc, user_id=user))
            assert await read_json(ws) == {"JoinDocument": {"document_id": doc, "user_id": user}}
            # The token says who this is: claiming another user is refused.
            other = new_id()
            await ws.send_str(frame("JoinDocument", document_id=new_id(), user_id=other))
            reply = await read_json(ws)
            assert reply["Error"]["code"] == ErrorCode.AUTH_ERROR
            assert not ws.closed


async def test_no_token_with_a_key_cannot_bind_by_joining() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        outcome = await connect_and_collect(
            server.url, send=[frame("JoinDocument", document_id=new_id(), user_id=new_id())]
        )
        assert outcome.close_code == 1008
        assert [e["code"] for e in outcome.errors] == [ErrorCode.AUTH_ERROR]
        assert not any("JoinDocument" in f for f in outcome.frames)
        assert server.service.hub.connections == {}


@pytest.mark.parametrize("keypair", [rsa_keypair, ec_keypair], ids=["RS256", "ES256"])
async def test_public_key_tokens(tmp_path: Path, keypair: Any) -> None:
    private, public = keypair()
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public)
    async with running_server(jwt_public_key=str(key_file)) as server:
        user = new_id()
        from cpc_signaling.tokens import mint_token

        good = mint_token(sub=user, private_key_pem=private)
        async with Client(server.url, user, token=good, reconnect=False) as client:
            await client.join(new_id())
        # Signed by another key of the same kind: refused.
        other_private, _ = keypair()
        await expect_refused(
            server.url,
            "signature",
            params={"token": mint_token(sub=user, private_key_pem=other_private)},
        )
        # "alg confusion": an HS256 token whose secret is the public key itself.
        forged = jwt.api_jws.PyJWS(algorithms=["HS256"])
        header = {"alg": "HS256", "typ": "JWT"}
        import json as _json

        payload = _json.dumps({"sub": user, "exp": int(time.time()) + 60}).encode()
        hs = forged._algorithms["HS256"]
        signing_input = (
            jwt.utils.base64url_encode(_json.dumps(header).encode())
            + b"."
            + jwt.utils.base64url_encode(payload)
        )
        signature = hs.sign(signing_input, public)  # bypasses PyJWT's own PEM guard
        confused = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
        await expect_refused(server.url, "algorithm", params={"token": confused})


async def test_docs_claim_limits_joins_and_connection_stays_open() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        user, allowed, forbidden = new_id(), new_id(), new_id()
        tok = token(user, docs=[allowed.upper()])
        async with Client(server.url, user, token=tok, reconnect=False) as client:
            with pytest.raises(JoinError) as refused:
                await client.join(forbidden)
            assert refused.value.error.code == ErrorCode.AUTH_ERROR
            assert client.connected
            snapshot = await client.join(allowed)
            assert snapshot[-1] == JoinDocument(document_id=allowed, user_id=user)
        # An empty list allows nothing.
        async with Client(server.url, user, token=token(user, docs=[]), reconnect=False) as c:
            with pytest.raises(JoinError):
                await c.join(allowed)


async def test_token_expiring_while_connected_closes_1008_and_leaves() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        doc, short_user, watcher_user = new_id(), new_id(), new_id()
        now = time.time()
        short = token(short_user, now=now, ttl=2)  # exp = int(now) + 2: 1 to 2 s from now
        exp = int(now) + 2
        async with (
            Client(server.url, watcher_user, token=token(watcher_user), reconnect=False) as watcher,
            aiohttp.ClientSession() as session,
            session.ws_connect(server.url, params={"token": short}) as ws,
        ):
            await watcher.join(doc)
            await join_raw(ws, doc, short_user)
            await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
            error = await read_json(ws, timeout=TIMEOUT + 2)
            assert error == {"Error": {"code": "AUTH_ERROR", "message": "token expired"}}
            assert time.time() >= exp - 0.05  # not before the token's exp
            closing = await ws.receive(TIMEOUT)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1008
            left = await receive_until(watcher, lambda m: isinstance(m, LeaveDocument))
            assert left[-1] == LeaveDocument(document_id=doc, user_id=short_user)
        assert server.service.sessions == {}  # its session (and timer handle) released


async def test_leeway_accepts_a_just_expired_token() -> None:
    async with running_server(jwt_secret=SECRET, jwt_leeway=30.0) as server:
        user = new_id()
        late = token(user, now=time.time() - 65, ttl=60)  # expired 5 s ago
        async with Client(server.url, user, token=late, reconnect=False) as client:
            await client.join(new_id())
    async with running_server(jwt_secret=SECRET) as server:
        await expect_refused(server.url, "expired", params={"token": late})


SPOOFABLE: dict[str, dict[str, Any]] = {
    "JoinDocument": {},
    "LeaveDocument": {},
    "PresenceUpdate": {
        "cursor": {"line": 1, "column": 1},
        "selection": {"start": {"line": 1, "column": 1}, "end": {"line": 1, "column": 2}},
        "is_typing": True,
        "timestamp": TS,
    },
    "CursorUpdate": {"position": {"line": 1, "column": 1}, "timestamp": TS},
    "SelectionUpdate": {
        "selection": {"start": {"line": 1, "column": 1}, "end": {"line": 1, "column": 2}},
        "timestamp": TS,
    },
    "TypingIndicator": {"is_typing": True, "timestamp": TS},
    "Annotation": {"position": {"line": 1, "column": 1}, "content": "x", "timestamp": TS},
    "Comment": {"position": {"line": 1, "column": 1}, "content": "x", "timestamp": TS},
    "PresenceStatus": {"status": "away", "timestamp": TS},
}


@pytest.mark.parametrize("authenticated", [True, False], ids=["jwt", "open"])
async def test_spoofed_user_id_in_every_message_type(authenticated: bool) -> None:
    # 27 refusals: more than the error budget (20 in 10 s) allows; that is not under test here.
    overrides: dict[str, Any] = {"error_limit": 1000}
    if authenticated:
        overrides["jwt_secret"] = SECRET
    async with running_server(**overrides) as server:
        doc, mallory, victim = new_id(), new_id(), new_id()
        tok = token(mallory) if authenticated else None
        async with (
            Client(server.url, victim, token=token(victim), reconnect=False) as witness,
            aiohttp.ClientSession() as session,
            session.ws_connect(server.url, params={"token": tok} if tok else None) as ws,
        ):
            await witness.join(doc)
            await join_raw(ws, doc, mallory)
            await receive_until(witness, lambda m: isinstance(m, JoinDocument))
            for kind, fields in SPOOFABLE.items():
                # As the victim, as a random user, and as the victim in upper case.
                for as_user in (victim, new_id(), victim.upper()):
                    await ws.send_str(frame(kind, document_id=doc, user_id=as_user, **fields))
                    reply = await read_json(ws)
                    assert reply["Error"]["code"] == ErrorCode.AUTH_ERROR, (kind, reply)
            # Nothing spoofed reached the witness: the next thing it sees is mallory's own cursor.
            await ws.send_str(
                frame("CursorUpdate", document_id=doc, user_id=mallory, **SPOOFABLE["CursorUpdate"])
            )
            got = await witness.receive(TIMEOUT)
            assert isinstance(got, CursorUpdate) and got.user_id == mallory, got
            # Nor is anything stored: a new joiner's snapshot holds no victim-authored message.
            newcomer = new_id()
            async with Client(server.url, newcomer, token=token(newcomer), reconnect=False) as late:
                snapshot = await late.join(doc)
            stored_or_presence = [m for m in snapshot if not isinstance(m, JoinDocument)]
            assert stored_or_presence, snapshot
            assert all(getattr(m, "user_id", None) == mallory for m in stored_or_presence), snapshot


async def test_an_id_with_a_trailing_newline_is_not_an_id() -> None:
    # `$` in a regex also matches before a final newline: "<victim>\n" must not pass for an id.
    async with running_server() as server:
        victim = new_id()
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.url) as ws,
        ):
            for doc, user in ((new_id(), victim + "\n"), (new_id() + "\n", victim)):
                await ws.send_str(frame("JoinDocument", document_id=doc, user_id=user))
                reply = await read_json(ws)
                assert reply["Error"]["code"] == ErrorCode.PARSE_ERROR, reply


def test_authenticator_unit() -> None:
    auth = Authenticator(secret=SECRET, audience="a")
    user = new_id()
    identity = auth.authenticate(token(user, audience="a", docs=[user], ttl=100))
    assert identity.user_id == user and identity.allowed_documents == frozenset({user})
    assert identity.expires_at > time.time() + 90
    with pytest.raises(AuthError):
        auth.authenticate(token(user))
    assert not Authenticator().enabled
    assert "OPEN" in Authenticator().describe()
    assert Authenticator(secret="short").weak_secret
    with pytest.raises(ValueError):
        Authenticator(secret=SECRET, public_key_pem=rsa_keypair()[1])
    assert bearer_token("q", "Bearer h") == "h"
    assert bearer_token("q", "bearer  h ") == "h"
    assert bearer_token("q", "Basic xyz") == "q"
    assert bearer_token(None, None) is None
    assert bearer_token("", None) is None


def test_origin_policy_unit() -> None:
    any_origin = OriginPolicy("*")
    assert any_origin.allows("https://evil.example") and any_origin.allows(None)
    policy = OriginPolicy("https://app.example, http://localhost:3000/")
    assert policy.allows("https://APP.example")
    assert policy.allows("http://localhost:3000")
    assert not policy.allows("https://app.example:444")
    assert not policy.allows("http://app.example")
    assert not policy.allows("null")
    assert policy.allows(None)  # not a browser
    assert OriginPolicy("").any


async def test_token_command_mints_what_the_server_accepts(tmp_path: Path) -> None:
    user, doc = new_id(), new_id()
    result = await run(
        [
            sys.executable,
            "-m",
            "cpc_signaling",
            "token",
            "--sub",
            user,
            "--docs",
            doc,
            "--ttl",
            "60",
        ],
        env={"CPC_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
    )
    assert result[0] == 0, result
    minted = result[1].strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sub"] == user and claims["docs"] == [doc]
    assert 50 <= claims["exp"] - time.time() <= 61
    async with (
        running_server(jwt_secret=SECRET) as server,
        Client(server.url, user, token=minted, reconnect=False) as client,
    ):
        await client.join(doc)
        with pytest.raises(JoinError):
            await client.join(new_id())
    # Without a secret or key it says so and fails.
    failed = await run(
        [sys.executable, "-m", "cpc_signaling", "token"], env={"PATH": "/usr/bin:/bin"}
    )
    assert failed[0] == 2 and "secret" in failed[2], failed


async def test_first_log_line_says_open_without_a_key() -> None:
    server = await spawn_server()
    try:
        await healthy(server.http)
        assert "running OPEN, no authentication" in server.lines[0], server.lines
    finally:
        assert server.stop() == 0
    server = await spawn_server(env={"CPC_JWT_SECRET": SECRET})
    try:
        await healthy(server.http)
        assert "JWT authentication (HS256)" in server.lines[0], server.lines
        assert not any("OPEN" in line for line in server.lines)
        assert not any(SECRET in line for line in server.lines)  # never log secrets
        # A client of the subprocess with a token minted from the same secret gets in.
        user = new_id()
        async with Client(server.url, user, token=token(user), reconnect=False) as client:
            await client.join(new_id())
        await expect_refused(server.url, "missing token")
    finally:
        assert server.stop() == 0
    await asyncio.sleep(0)


AUTH = Authenticator(secret=SECRET)


def sign_any(claims: dict[str, Any]) -> str:
    """HS256 over any JSON payload, NaN and Infinity included (PyJWT's encode refuses some)."""
    import base64
    import hashlib
    import hmac
    import json as _json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(_json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


_scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
)
claim_values: st.SearchStrategy[Any] = _scalars | st.lists(_scalars, max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "iat", "docs", "aud", "iss", "x"]),
        claim_values,
    ).map(sign_any)
)
def test_any_token_is_an_identity_or_an_auth_error(value: str) -> None:
    try:
        identity = AUTH.authenticate(value)
    except AuthError as exc:
        assert exc.message
    else:
        assert identity.user_id == identity.user_id.lower()
