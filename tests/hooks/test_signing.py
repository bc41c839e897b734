"""X-CPC-Signature: what is signed, and what a receiver accepts."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from cpc_signaling.server.hooks import sign, verify_signature

BODY = b'{"events":[]}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign("key", BODY, timestamp=1_700_000_000)
    expected = hmac.new(b"key", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_a_receiver_accepts_a_fresh_valid_signature_only() -> None:
    t = 1_700_000_000
    header = sign("key", BODY, timestamp=t)
    assert verify_signature("key", BODY, header, now=t + 10)
    assert verify_signature(b"key", BODY, header, now=t - 10)
    assert not verify_signature("key", BODY + b" ", header, now=t)  # body changed
    assert not verify_signature("other", BODY, header, now=t)  # wrong secret
    assert not verify_signature("key", BODY, header, now=t + 301)  # a replay, too late
    assert verify_signature("key", BODY, header, now=t + 3600, tolerance=7200)
    # The timestamp is signed: moving it invalidates the signature.
    forged = header.replace(f"t={t}", f"t={t + 100}")
    assert not verify_signature("key", BODY, forged, now=t + 100)


def test_malformed_headers_are_refused() -> None:
    t = 1_700_000_000
    good = sign("key", BODY, timestamp=t)
    mac = good.split("v1=")[1]
    for header in (None, "", "v1=" + mac, f"t={t}", f"t=abc,v1={mac}", "x" * 2000, "garbage"):
        assert not verify_signature("key", BODY, header, now=t)
    # Several v1 entries (a receiver rotating keys): one match suffices.
    assert verify_signature("key", BODY, f"t={t},v1=00,v1={mac}", now=t)


def test_the_verifier_in_the_docs_works() -> None:
    """docs/hooks.md shows receivers a standalone verify(); it must accept our signatures."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "hooks.md").read_text()
    code = page.split("In Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify = namespace["verify"]
    header = sign("key", BODY)
    assert verify(b"key", BODY, header)
    assert not verify(b"other", BODY, header)
    assert not verify(b"key", BODY + b"x", header)
    assert not verify(b"key", BODY, sign("key", BODY, timestamp=1_000_000_000))
    assert not verify(b"key", BODY, "garbage")
