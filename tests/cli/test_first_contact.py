"""First contact with the command line: the real ``cpc-signaling`` process.

A mistake a newcomer makes gets one line on stderr saying what is wrong and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import cpc_signaling

from ..helpers import UNIT

BIN = Path(sys.executable).parent / "cpc-signaling"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CPC_")}
    return subprocess.run(
        [str(BIN), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = lines
    assert line.startswith("cpc-signaling"), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    one_line_error(result, f"127.0.0.1:{port}", "address already in use")
    assert result.returncode == 1


def test_a_port_that_is_not_a_number() -> None:
    result = run("serve", env={"CPC_PORT": "abc"})
    one_line_error(result, "CPC_PORT", "'abc'", "integer")
    assert result.returncode == 2


def test_an_unknown_log_level() -> None:
    result = run("serve", "--log-level", "verbose")
    one_line_error(result, "--log-level", "'verbose'", "debug, info, warning, error")
    assert result.returncode == 2
    one_line_error(run("serve", env={"CPC_LOG_LEVEL": "verbose"}), "CPC_LOG_LEVEL")


def test_a_token_for_a_subject_that_is_not_a_uuid() -> None:
    result = run("token", "--sub", "alice", "--jwt-secret", "s" * 32)
    one_line_error(result, "--sub", "'alice'", "UUID")
    assert result.returncode == 2


def test_redis_url_without_the_redis_extra() -> None:
    # The extra is missing: the import system cannot find `redis` (a None entry in
    # sys.modules is Python's own way to make an import fail), then the real entry point.
    script = (
        "import sys; sys.modules['redis'] = None; "
        "from cpc_signaling.cli import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "serve", "--redis-url", "redis://127.0.0.1:6379/0"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CPC_")},
    )
    one_line_error(result, "redis", "pip install 'cpc-signaling[redis]'")


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cpc-signaling {cpc_signaling.__version__}"


@pytest.mark.parametrize("command", [[], ["serve"], ["token"], ["bench"]])
def test_help_has_no_rst_backticks(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "`" not in result.stdout, [line for line in result.stdout.splitlines() if "`" in line]
    assert "usage: cpc-signaling" in result.stdout


def test_no_command_says_what_to_do_in_one_line() -> None:
    one_line_error(run(), "serve")


def test_the_first_lines_of_a_good_start_are_not_errors() -> None:
    # A start that works writes nothing to stderr (logs go to stdout).
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CPC_")},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if re.search(r"ws://127\.0\.0\.1:\d+/ws", line):
                break
        proc.terminate()
        _, err = proc.communicate(timeout=15 * UNIT)
        assert proc.returncode == 0
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_token_mints_the_claims_the_server_reads_including_info() -> None:
    import jwt

    sub, doc = "5B0C7E0A-3F6D-4C1E-9D2A-7A8B9C0D1E2F", "6f1c2e1a-0d7e-4d53-9a55-0d8f3b0f0b11"
    secret = "s" * 32
    result = run(
        "token", "--jwt-secret", secret, "--sub", sub, "--docs", doc, "--info", '{"name": "Ada"}'
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == sub.lower()
    assert claims["docs"] == [doc]
    assert claims["info"] == {"name": "Ada"}
    one_line_error(run("token", "--jwt-secret", secret, "--info", "[1, 2]"), "JSON object")
