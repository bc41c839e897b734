"""Secure by default: what the server refuses to start with, and limits on guessing.

Through the public surface: the real ``cpc-signaling`` process (exit code and
its one stderr line), real servers for tokens and the HTTP API.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cpc_signaling.client import Client, JoinError
from cpc_signaling.server import Config, Service

from ..conftest import ServerFactory
from ..helpers import UNIT, new_id, running_server
from .support import SECRET, token

BIN = Path(sys.executable).parent / "cpc-signaling"
ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 32


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CPC_")}
    return {**clean, "PYTHONUNBUFFERED": "1", **extra}


def refused(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``cpc-signaling ARGS`` expecting it not to start: its one stderr line."""
    result = subprocess.run(
        [str(BIN), *args],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "ws://" not in result.stdout  # it never listened
    return lines[0]


def serves(args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Run ``cpc-signaling serve --port 0 ARGS`` until it listens, then stop it: its log."""
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0", *args],
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "/ws" in line and "listening" in line:
                break
        proc.terminate()
        assert proc.wait(15 * UNIT) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("listening" in line for line in lines), lines
    return lines


# -- an empty secret is not "no secret" ---------------------------------------------


def test_an_empty_jwt_secret_variable_is_a_startup_error() -> None:
    line = refused(["serve"], _env(CPC_JWT_SECRET=""))
    assert "empty" in line and "CPC_JWT_SECRET" in line, line


def test_an_empty_jwt_secret_flag_is_a_startup_error() -> None:
    line = refused(["serve", "--jwt-secret", ""])
    assert "empty" in line and "--jwt-secret" in line, line


def test_an_empty_secret_is_refused_in_process_too() -> None:
    with pytest.raises(ValueError, match="empty"):
        Service(Config(jwt_secret=""))


# -- open mode beyond loopback needs --open -----------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_open_mode_on_a_public_address_needs_open(host: str) -> None:
    line = refused(["serve", "--host", host])
    assert "--open" in line and "--jwt-secret" in line, line


def test_open_mode_on_a_public_address_with_open_serves_and_warns() -> None:
    lines = serves(["--host", "0.0.0.0", "--open"])
    assert any("WARNING" in line and "OPEN" in line for line in lines), lines


def test_a_key_on_a_public_address_needs_no_open() -> None:
    serves(["--host", "0.0.0.0"], _env(CPC_JWT_SECRET=SECRET))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_open_mode_on_loopback_needs_nothing(host: str) -> None:
    serves(["--host", host])


def test_the_docker_images_default_command_asks_for_a_key_or_open() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    env = _env()
    for match in re.finditer(r"^ENV (.+?)(?<!\\)$", text, re.MULTILINE | re.DOTALL):
        for pair in shlex.split(match.group(1).replace("\\\n", " ")):
            key, _, value = pair.partition("=")
            env[key] = value
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)[1])  # type: ignore[index]
    cmd = re.search(r"^CMD (.+)$", text, re.MULTILINE)
    args = [*entry[1:], *(json.loads(cmd[1]) if cmd else [])]
    assert env["CPC_HOST"] == "0.0.0.0"
    line = refused(args, env)
    assert "CPC_JWT_SECRET" in line and "CPC_OPEN" in line, line


# -- --jwt-max-age ---------------------------------------------------------------------


async def test_jwt_max_age_refuses_tokens_that_live_too_long() -> None:
    async with running_server(jwt_secret=SECRET, jwt_max_age=600) as server:
        user = new_id()
        async with Client(server.url, token=token(user, ttl=3600), reconnect=False) as client:
            with pytest.raises(JoinError) as caught:
                await client.join(new_id())
            assert caught.value.code == "AUTH_ERROR"
            assert "--jwt-max-age" in caught.value.message
        async with Client(server.url, token=token(user, ttl=300), reconnect=False) as client:
            await client.join(new_id())


def test_jwt_max_age_must_not_be_negative() -> None:
    line = refused(["serve", "--jwt-max-age", "-1"], _env(CPC_JWT_SECRET=SECRET))
    assert "--jwt-max-age" in line, line


# -- the HTTP API key ---------------------------------------------------------------


def test_a_short_api_key_is_a_startup_error() -> None:
    line = refused(["serve", "--api-key", "k" * 31])
    assert "--api-key" in line and "32" in line, line
    with pytest.raises(ValueError, match="32"):
        Service(Config(api_key="short"))


async def test_failed_api_authentications_are_limited_per_address(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(api_key=KEY) as server, aiohttp.ClientSession() as http:
        path = f"{server.http}/api/documents/{new_id()}/presence"
        statuses = []
        for attempt in range(12):
            async with http.get(path, headers={"Authorization": f"Bearer wrong{attempt}"}) as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
        assert statuses == [401] * 10 + [429] * 2, statuses
        assert retry_after is not None and int(retry_after) >= 1
        # Blocked: even the right key gets no answer about itself from this address.
        good = {"Authorization": f"Bearer {KEY}"}
        async with http.get(path, headers=good) as r:
            assert r.status == 429
            body = await r.json()
            assert body["Error"]["code"] == "CONNECTION_ERROR"
        metrics = server.service.metrics.render().decode()
        assert 'cpc_api_requests_total{route="throttled",status="429"} 3.0' in metrics


async def test_the_failure_budget_refills_and_good_calls_do_not_spend_it() -> None:
    from cpc_signaling.server import api

    service = Service(Config(api_key=KEY))
    await service.start()
    try:
        path = f"/api/documents/{new_id()}/presence"
        good, bad = f"Bearer {KEY}", "Bearer wrong"

        async def status(authorization: str, remote: str) -> int:
            response = await api.handle(service, "GET", path, authorization, b"", remote=remote)
            return response.status

        for _ in range(50):  # good calls never count
            assert await status(good, "10.0.0.1") == 200
        for _ in range(10):
            assert await status(bad, "10.0.0.1") == 401
        assert await status(good, "10.0.0.1") == 429
        # Another address is not affected.
        assert await status(bad, "10.0.0.2") == 401
        # One failure back per refill interval.
        limiter = api.auth_failures(service)
        limiter.now = lambda: time.monotonic() + api.FAILURE_REFILL_SECONDS
        assert await status(good, "10.0.0.1") == 200
    finally:
        await service.close()
