"""The package's one exception tree: every exception it raises on purpose is a CpcError,
defined once in cpc_signaling.errors and re-exported where callers used to find it."""

from __future__ import annotations

import ast
import pathlib

import pytest

import cpc_signaling
from cpc_signaling import errors
from cpc_signaling.backends import BackendStartError
from cpc_signaling.client import ClientError, JoinError
from cpc_signaling.protocol import Error, ErrorCode, ProtocolError
from cpc_signaling.server.errors import Unavailable
from cpc_signaling.server.hooks import JoinDenied

PACKAGE = pathlib.Path(cpc_signaling.__file__).parent


def test_every_exception_class_of_the_package_is_defined_in_errors() -> None:
    """No module but errors.py defines a public exception: one tree, one place."""
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {ast.unparse(base) for base in node.bases}
            if any(b.endswith(("Exception", "Error")) for b in bases):
                stray.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert stray == []


def test_the_tree() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.CpcError), name
    assert issubclass(JoinError, ClientError)
    assert issubclass(BackendStartError, errors.BackendError)
    assert ProtocolError is errors.ProtocolError
    assert Unavailable is errors.Unavailable
    assert JoinDenied is errors.JoinDenied
    assert ClientError is errors.ClientError


def test_join_error_carries_the_servers_error() -> None:
    error = Error(code=ErrorCode.AUTH_ERROR, message="token expired")
    with pytest.raises(errors.CpcError) as caught:
        raise JoinError(error)
    assert isinstance(caught.value, JoinError)
    assert (caught.value.code, caught.value.message, caught.value.error) == (
        "AUTH_ERROR",
        "token expired",
        error,
    )
