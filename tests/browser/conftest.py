"""Real-browser fixtures: Debian's Chromium driven by Playwright, a real server subprocess.

The browser is ``/usr/bin/chromium`` (``CPC_CHROMIUM`` overrides it); Playwright's
own browser downloads are never used. Where no Chromium can be had (``make test``
installs it with apt-get where missing), the browser tests are skipped, and the
run says so loudly: a warning, and a banner at the end of the summary.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..helpers import UNIT, new_id

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, ViewportSize

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("CPC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# How long a page may take to show what another page did. A functional bound
# (the user would call it broken past this), not a performance assertion.
BOUND_MS = 2000 * UNIT
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}

_skipped: list[str] = []
REPORT: list[str] = []  # lines the tests want in the run's summary (measurements)


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(
        CHROMIUM
    ):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CPC_CHROMIUM)"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.write_sep("-", "browser measurements")
        for line in REPORT:
            terminalreporter.write_line(line)
    if _skipped:
        terminalreporter.write_sep("!", "BROWSER TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(
            f"The real-browser tests did NOT run: {_skipped[0]}", red=True, bold=True
        )


@dataclass
class DemoServer:
    proc: subprocess.Popen[str]
    http: str
    lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_demo_server(*args: str, port: int = 0) -> DemoServer:
    """``cpc-signaling serve --port PORT ARGS`` as a real subprocess; waits for its ws:// line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpc_signaling", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def pump() -> None:  # keeps the pipe drained for the server's whole life
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"ws://(\S+?)/ws", line)
            if match and not address:
                address.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(15 * UNIT) or not address:
        proc.kill()
        raise RuntimeError("the server did not start:\n" + "".join(lines))
    return DemoServer(proc, f"http://{address[0]}", lines)


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoServer]:
    """``cpc-signaling serve --port 0`` as a real subprocess: demo page and WebSocket."""
    server = start_demo_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _unavailable()
    if reason is not None:
        _skipped.append(reason)
        warnings.warn(f"BROWSER TESTS SKIPPED: {reason}", stacklevel=1)
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")
    from playwright.sync_api import sync_playwright

    manager = sync_playwright()
    playwright: Playwright = manager.start()
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


OpenPage = Callable[..., "Page"]


@pytest.fixture
def open_page(browser: Browser, demo_server: DemoServer) -> Iterator[OpenPage]:
    """Open the demo as a new user (own browser context, like another person's browser)."""
    contexts: list[Any] = []
    errors: list[str] = []

    def opener(
        doc: str | None,
        user: str | None = None,
        server: DemoServer | None = None,
        query: str = "",
    ) -> Page:
        """The demo at ``/?doc=DOC&user=USER&QUERY`` (``doc`` None: plain ``/``, no user)."""
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{exc}"))
        base = (server or demo_server).http
        if doc is None:
            page.goto(f"{base}/{'?' + query if query else ''}")
        else:
            page.goto(f"{base}/?doc={doc}&user={user or new_id()}{'&' + query if query else ''}")
        page.wait_for_selector("html[data-ready=true]", timeout=10_000 * UNIT)
        return page

    yield opener
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
    assert not errors, f"JavaScript errors in the demo: {errors}"


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
