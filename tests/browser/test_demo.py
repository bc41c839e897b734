"""The demo page in a real browser: two (or three) people in one document.

Each page is its own browser context (another person's browser), on a real
``cpc-signaling serve`` subprocess. What one page does, the other must show
within ``BOUND_MS``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import statistics
import threading
from typing import TYPE_CHECKING

import pytest

from ..helpers import UNIT, new_id
from .conftest import (
    BOUND_MS,
    REPORT,
    ROOT,
    VIEWPORT,
    DemoServer,
    OpenPage,
    artifact,
    start_demo_server,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page
    from playwright.sync_api._generated import LocatorAssertions

pytestmark = pytest.mark.timeout(120)


def expect(locator: Locator) -> LocatorAssertions:
    # Imported here: without playwright the module still imports, and the tests skip.
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def go(page: Page, line: int, column: int | None = None) -> None:
    """Put the caret at (line, column), or at the end of the line, with the keyboard."""
    page.focus("#text")
    page.keyboard.press("Control+Home")
    for _ in range(line):
        page.keyboard.press("ArrowDown")
    if column is None:
        page.keyboard.press("End")
        return
    page.keyboard.press("Home")
    for _ in range(column):
        page.keyboard.press("ArrowRight")


def name_of(page: Page, user: str) -> str:
    name = page.evaluate("id => window.cpcDemo.person(id).name", user)
    assert isinstance(name, str)
    return name


def test_the_other_page_shows_cursor_selection_typing_status_and_comment(
    open_page: OpenPage,
) -> None:
    doc, alice_id, bob_id = new_id(), new_id(), new_id()
    alice = open_page(doc, alice_id)
    bob = open_page(doc, bob_id)
    cursor = bob.locator(f'.rc[data-user="{alice_id}"]')
    row = bob.locator(f'[data-presence-user="{alice_id}"]')
    expect(row).to_be_visible(timeout=BOUND_MS)
    expect(bob.locator("#people-count")).to_have_text("2")
    expect(alice.locator("#conn")).to_have_text("Live")

    # Cursor: Alice moves, Bob sees her caret with her name at the same place.
    go(alice, 3, 7)
    expect(cursor).to_have_attribute("data-pos", "3:7", timeout=BOUND_MS)
    expect(cursor.locator(".rc-flag")).to_contain_text(name_of(bob, alice_id))
    expect(row.locator(".person-meta")).to_contain_text("Ln 4, Col 8")

    # Selection: shift+arrows select five characters; Bob sees a band in her colour.
    for _ in range(5):
        alice.keyboard.press("Shift+ArrowRight")
    band = bob.locator(f'.sel[data-user="{alice_id}"]')
    expect(band).to_have_count(1, timeout=BOUND_MS)
    expect(cursor).to_have_attribute("data-pos", "3:12", timeout=BOUND_MS)
    expect(row.locator(".person-meta")).to_contain_text("5 selected")
    colour = bob.evaluate("id => window.cpcDemo.person(id).colour", alice_id)
    style = band.get_attribute("style") or ""
    assert colour in style, (colour, style)
    alice.keyboard.press("ArrowRight")  # collapse: the band goes
    expect(band).to_have_count(0, timeout=BOUND_MS)

    # Typing: indicator in the list, on the caret and in the editor header; then off.
    alice.keyboard.type("hey ")
    expect(row).to_have_attribute("data-typing", "true", timeout=BOUND_MS)
    expect(bob.locator("#typing")).to_contain_text(f"{name_of(bob, alice_id)} is typing")
    expect(cursor.locator(".dots")).to_have_count(1)
    expect(row).to_have_attribute("data-typing", "false", timeout=BOUND_MS + 1500)
    expect(bob.locator("#typing")).to_have_text("")

    # Status: away in the list and on the caret's flag.
    alice.select_option("#status", "away")
    expect(row).to_have_attribute("data-status", "away", timeout=BOUND_MS)
    expect(row.locator(".pill")).to_have_text("away")
    expect(cursor).to_have_attribute("data-status", "away")
    expect(cursor.locator(".rc-flag .tag")).to_have_text("away")

    # Comment anchored to line 6 (index 5): in Bob's panel, and marked in his gutter.
    alice.fill("#note-line", "6")
    alice.fill("#note-text", "Is <b>instant</b> measurable?")
    alice.click("#note-form button[type=submit]")
    note = bob.locator(f'.note[data-user="{alice_id}"]')
    expect(note).to_contain_text("Is <b>instant</b> measurable?", timeout=BOUND_MS)
    expect(note.locator("b")).to_have_count(0)  # shown as text, never as markup
    expect(note).to_have_attribute("data-kind", "Comment")
    expect(note).to_have_attribute("data-line", "5")
    expect(note.locator(".line-chip")).to_have_text("L6")
    expect(bob.locator('.gutter-line[data-line="5"] .mark')).to_have_count(1)
    # The author sees it too (the server does not echo it; the client keeps it).
    expect(alice.locator(f'.note[data-user="{alice_id}"]')).to_have_count(1)

    # An annotation from Bob reaches Alice; "jump to line" moves Alice's caret there,
    # which Bob then sees.
    bob.click('label:has-text("Annotation")')
    bob.fill("#note-line", "12")
    bob.fill("#note-text", "Needs a date")
    bob.click("#note-form button[type=submit]")
    mark = alice.locator(f'.note[data-user="{bob_id}"]')
    expect(mark).to_have_attribute("data-kind", "Annotation", timeout=BOUND_MS)
    mark.locator(".line-chip").click()
    expect(cursor).to_have_attribute("data-pos", "11:0", timeout=BOUND_MS)


def test_a_page_closed_shows_its_user_gone(open_page: OpenPage) -> None:
    doc, alice_id, bob_id = new_id(), new_id(), new_id()
    alice = open_page(doc, alice_id)
    bob = open_page(doc, bob_id)
    go(alice, 2, 3)
    expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_count(1, timeout=BOUND_MS)
    expect(bob.locator("#people-count")).to_have_text("2")

    alice.context.close()
    expect(bob.locator(f'[data-presence-user="{alice_id}"]')).to_have_count(0, timeout=BOUND_MS)
    expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_count(0)
    expect(bob.locator("#people-count")).to_have_text("1")


def test_a_late_joiner_gets_presence_and_comments_from_the_snapshot(open_page: OpenPage) -> None:
    doc, alice_id = new_id(), new_id()
    alice = open_page(doc, alice_id)
    go(alice, 4, 2)
    alice.select_option("#status", "busy")
    alice.fill("#note-line", "5")
    alice.fill("#note-text", "before you came")
    alice.click("#note-form button[type=submit]")
    # A first observer proves the server has everything before the late joiner arrives.
    first = open_page(doc)
    expect(first.locator(f'.note[data-user="{alice_id}"]')).to_have_count(1, timeout=BOUND_MS)
    expect(first.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute(
        "data-pos", "4:2", timeout=BOUND_MS
    )
    expect(first.locator(f'[data-presence-user="{alice_id}"]')).to_have_attribute(
        "data-status", "busy", timeout=BOUND_MS
    )

    late = open_page(doc)
    # Everything is there at once: open_page returned after the join's acknowledgement.
    assert late.locator(f'.note[data-user="{alice_id}"]').count() == 1
    expect(late.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute("data-pos", "4:2")
    expect(late.locator(f'[data-presence-user="{alice_id}"]')).to_have_attribute(
        "data-status", "busy"
    )
    expect(late.locator("#people-count")).to_have_text("3")


# In page B: record when each position of A's caret is rendered (the animation
# frame that applies it). In page A: record when each key is pressed.
_WATCH = """
(user) => {
  window.__renders = [];
  const seen = new Set();
  const observer = new MutationObserver(() => {
    const node = document.querySelector(`.rc[data-user="${user}"]`);
    if (!node) return;
    const pos = node.dataset.pos;
    if (!seen.has(pos)) {
      seen.add(pos);
      window.__renders.push([pos, performance.timeOrigin + performance.now()]);
    }
  });
  observer.observe(document.getElementById("layer-over"),
    { subtree: true, childList: true, attributes: true, attributeFilter: ["data-pos"] });
}
"""
_KEYS = """
() => {
  window.__keys = [];
  document.getElementById("text").addEventListener("keydown",
    () => window.__keys.push(performance.timeOrigin + performance.now()), { capture: true });
}
"""


def test_time_from_a_cursor_move_to_its_render_in_the_other_page(open_page: OpenPage) -> None:
    doc, alice_id = new_id(), new_id()
    alice = open_page(doc, alice_id)
    bob = open_page(doc)
    go(alice, 1, 0)  # line 2 is empty; line 1 (index 0) is the long title: use it
    go(alice, 0, 0)
    expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute(
        "data-pos", "0:0", timeout=BOUND_MS
    )
    bob.evaluate(_WATCH, alice_id)
    alice.evaluate(_KEYS)
    moves = 30
    for _ in range(moves):
        alice.keyboard.press("ArrowRight")
        alice.wait_for_timeout(70)  # slower than the 50 ms throttle: every move is sent
    expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute(
        "data-pos", f"0:{moves}", timeout=BOUND_MS
    )
    keys: list[float] = alice.evaluate("window.__keys")
    renders: list[list[object]] = bob.evaluate("window.__renders")
    rendered = {str(pos): float(str(at)) for pos, at in renders}
    assert len(keys) == moves
    latencies = []
    for i, pressed in enumerate(keys, start=1):
        at = rendered.get(f"0:{i}")
        assert at is not None, f"position 0:{i} was never rendered (renders: {renders})"
        latencies.append(at - pressed)
    latencies.sort()
    summary = {
        "moves": moves,
        "median_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (moves - 1))], 1),
        "max_ms": round(latencies[-1], 1),
        "min_ms": round(latencies[0], 1),
        "what": "keydown in page A -> the animation frame that moves A's caret in page B",
    }
    artifact("cursor-latency.json").write_text(json.dumps(summary, indent=2) + "\n")
    REPORT.append(
        f"cursor move -> render in the other page, {moves} moves: median "
        f"{summary['median_ms']} ms, p95 {summary['p95_ms']} ms, max {summary['max_ms']} ms "
        "(artifacts/cursor-latency.json)"
    )
    assert all(0 <= value < BOUND_MS for value in latencies), latencies


def test_screenshots_with_three_users(open_page: OpenPage) -> None:
    # Pinned users, so the picture is the same each time: Fuzzy Walrus (blue, the viewer),
    # Cosmic Bison (pink) and Calm Heron (green); names and colours come from the ids.
    doc = new_id()
    ada = "4f426dcb-b394-4b36-bb2d-420f0f88080b"
    bo = "3f98e277-4cbd-47ad-9c90-a9587403e430"
    cy = "90c192cf-d3ac-44af-8f21-ddb66cad4a26"
    a = open_page(doc, ada)
    b = open_page(doc, bo)
    c = open_page(doc, cy)

    # Bo selects "Cursors and selections" (line 5) and is away.
    go(b, 4, 2)
    for _ in range(22):
        b.keyboard.press("Shift+ArrowRight")
    b.select_option("#status", "away")
    # Ada: cursor on line 15, comments on it.
    a.fill("#note-line", "15")
    a.fill("#note-text", "Past 10 cursors, show avatars only?")
    a.click("#note-form button[type=submit]")
    # Bo annotates line 10.
    b.click('label:has-text("Annotation")')
    b.fill("#note-line", "10")
    b.fill("#note-text", "Design team is ready for Tuesday")
    b.click("#note-form button[type=submit]")
    # Cy comments on line 11, then goes back to typing there.
    c.fill("#note-line", "11")
    c.fill("#note-text", "Can we make it Wednesday?")
    c.click("#note-form button[type=submit]")
    go(a, 14)
    go(c, 10, 13)
    c.keyboard.type("(or Wed)")

    for page, others in ((a, (bo, cy)), (b, (ada, cy)), (c, (ada, bo))):
        for other in others:
            expect(page.locator(f'.rc[data-user="{other}"]')).to_have_count(1, timeout=BOUND_MS)
        expect(page.locator(".note")).to_have_count(3, timeout=BOUND_MS)
        expect(page.locator("#people-count")).to_have_text("3")
    expect(a.locator(f'.sel[data-user="{bo}"]')).to_have_count(1)
    expect(a.locator(f'[data-presence-user="{cy}"]')).to_have_attribute(
        "data-typing", "true", timeout=BOUND_MS
    )
    expect(a.locator(f'[data-presence-user="{bo}"]')).to_have_attribute("data-status", "away")
    a.wait_for_timeout(150)  # let the caret transitions settle

    shot = artifact("demo-3-users.png")
    a.screenshot(path=str(shot))
    b.screenshot(path=str(artifact("demo-3-users-b.png")))
    c.screenshot(path=str(artifact("demo-3-users-c.png")))
    assert shot.stat().st_size > 10_000
    REPORT.append(f"screenshots of the demo with three users: {shot.relative_to(ROOT)} (+ -b, -c)")
    if os.environ.get("CPC_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "demo.png")


def test_the_complete_example_in_the_docs_works(browser: Browser, demo_server: DemoServer) -> None:
    """docs/javascript.md's complete example, as written, in two pages."""
    text = (ROOT / "docs" / "javascript.md").read_text()
    section = text[text.index("## A complete example") :]
    html = section[section.index("```html\n") + len("```html\n") :]
    html = html[: html.index("```")]
    base = demo_server.http
    html = html.replace("http://127.0.0.1:8765", base).replace(
        "ws://127.0.0.1:8765", base.replace("http://", "ws://")
    )
    # Served by a plain local web server, as a developer would try it (Chromium's
    # local-network-access checks keep pages without a local origin off 127.0.0.1).
    body = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    doc = new_id()
    errors: list[str] = []
    pages: list[Page] = []
    for _ in range(2):
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{site.server_address[1]}/example.html?doc={doc}")
        pages.append(page)
    a, b = pages
    try:
        caret = b.locator(".caret")
        a.click("#text")
        # The page listens once its join is acknowledged: press until the other page shows it.
        for _ in range(int(BOUND_MS / 100)):
            a.keyboard.press("Control+Home")
            a.keyboard.press("End")  # line 0, column 16
            if caret.count() == 1:
                break
            a.wait_for_timeout(100)
        expect(caret).to_have_attribute("style", re.compile(r"top: 0px"), timeout=BOUND_MS)
        a.keyboard.press("ArrowDown")
        expect(caret).to_have_attribute("style", re.compile(r"top: 22px"), timeout=BOUND_MS)
        match = re.search(r"left: ([\d.]+)px", caret.get_attribute("style") or "")
        assert match is not None and float(match[1]) > 100, match  # column 16, not 0
        a.context.close()
        expect(caret).to_have_count(0, timeout=BOUND_MS)
    finally:
        for page in pages:
            page.context.close()
        site.shutdown()
        site.server_close()
    assert not errors, errors


def test_after_a_server_restart_the_pages_reconnect_and_see_each_other_again(
    open_page: OpenPage,
) -> None:
    server = start_demo_server()
    try:
        doc, alice_id, bob_id = new_id(), new_id(), new_id()
        alice = open_page(doc, alice_id, server)
        bob = open_page(doc, bob_id, server)
        go(alice, 5, 4)
        alice.select_option("#status", "busy")
        row = bob.locator(f'[data-presence-user="{alice_id}"]')
        expect(row).to_have_attribute("data-status", "busy", timeout=BOUND_MS)
        expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute("data-pos", "5:4")

        server.stop(signal.SIGKILL)  # the process dies: no goodbye to anyone
        expect(bob.locator("#conn")).to_have_text("Reconnecting…", timeout=BOUND_MS)
        server = start_demo_server(port=server.port)
        # Both re-join; Alice's page re-sends her cursor and status; Bob's map is rebuilt.
        # (The backoff ceiling reaches 8-10 s if the restart is slow: allow for one full wait.)
        reconnect_ms = BOUND_MS + 20_000 * UNIT
        expect(bob.locator("#conn")).to_have_text("Live", timeout=reconnect_ms)
        expect(row).to_have_attribute("data-status", "busy", timeout=reconnect_ms)
        expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute(
            "data-pos", "5:4", timeout=BOUND_MS
        )
        go(alice, 7, 1)
        expect(bob.locator(f'.rc[data-user="{alice_id}"]')).to_have_attribute(
            "data-pos", "7:1", timeout=BOUND_MS
        )
    finally:
        server.stop()


def test_fresh_loads_of_the_root_open_one_named_document(open_page: OpenPage) -> None:
    """README: "open it in a few tabs". Two fresh loads of `/` are in one document."""
    first = open_page(None)
    second = open_page(None)
    doc = first.evaluate("window.cpcDemo.documentId")
    assert second.evaluate("window.cpcDemo.documentId") == doc
    assert f"doc={doc}" in first.url and f"doc={doc}" in second.url  # the URL names it
    other = second.evaluate("window.cpcDemo.userId")
    expect(first.locator(f'[data-presence-user="{other}"]')).to_be_visible(timeout=BOUND_MS)


def test_names_and_colours_come_from_the_users_info(open_page: OpenPage) -> None:
    doc, ada_id, bob_id = new_id(), new_id(), new_id()
    ada = open_page(doc, ada_id, query="name=Ada%20Lovelace&color=%23e91e63")
    bob = open_page(doc, bob_id)
    row = bob.locator(f'[data-presence-user="{ada_id}"]')
    expect(row.locator(".person-name")).to_have_text("Ada Lovelace", timeout=BOUND_MS)
    expect(row.locator(".avatar")).to_have_text("AL")
    assert "#e91e63" in (row.locator(".avatar").get_attribute("style") or "")
    go(ada, 2, 1)
    flag = bob.locator(f'.rc[data-user="{ada_id}"] .rc-flag')
    expect(flag).to_contain_text("Ada Lovelace", timeout=BOUND_MS)
    # Ada sees herself by her name; Bob, without info, keeps his made-up name everywhere.
    expect(ada.locator("#me-name")).to_have_text("Ada Lovelace")
    made_up = name_of(ada, bob_id)
    assert made_up != "Ada Lovelace" and " " in made_up
    expect(ada.locator(f'[data-presence-user="{bob_id}"] .person-name')).to_have_text(made_up)


def _send_comment(page: Page, doc: str, content: str, timestamp: str) -> None:
    page.evaluate(
        """([doc, content, timestamp]) => window.cpcDemo.client.sendMessage({
            type: "Comment", document_id: doc, user_id: window.cpcDemo.userId,
            position: { line: 2, column: 0 }, content, timestamp })""",
        [doc, content, timestamp],
    )


def test_a_comment_stamped_with_a_leap_second_renders(open_page: OpenPage) -> None:
    # The server accepts RFC 3339's second 60; Date cannot parse it. Before, formatting it
    # threw, and the comments panel stopped rendering for everyone in the document.
    doc = new_id()
    sender = open_page(doc)
    viewer = open_page(doc)
    _send_comment(sender, doc, "posted on a leap second", "2016-12-31T23:59:60Z")
    note = viewer.locator(".note", has_text="posted on a leap second")
    expect(note).to_have_count(1, timeout=BOUND_MS)
    expect(note.locator("time")).not_to_have_text("")
    assert note.locator("time").get_attribute("datetime") == "2016-12-31T23:59:60Z"
    late = open_page(doc)  # from the snapshot too
    expect(late.locator(".note", has_text="posted on a leap second")).to_have_count(1)
    # The panel still works afterwards: a normal comment shows up.
    viewer.fill("#note-text", "still alive")
    viewer.click("#note-form button[type=submit]")
    expect(late.locator(".note", has_text="still alive")).to_have_count(1, timeout=BOUND_MS)


def test_a_comment_the_server_refuses_does_not_stay_shown(open_page: OpenPage) -> None:
    server = start_demo_server("--max-content-chars", "20")
    try:
        doc = new_id()
        author = open_page(doc, server=server)
        reader = open_page(doc, server=server)
        text = "this comment is longer than twenty characters"
        author.fill("#note-text", text)
        author.click("#note-form button[type=submit]")
        expect(author.locator(".note")).to_have_count(0, timeout=BOUND_MS)
        expect(author.locator("#note-error")).to_contain_text("Not posted")
        expect(author.locator("#note-text")).to_have_value(text)  # given back to edit
        author.fill("#note-text", "short one")
        author.click("#note-form button[type=submit]")
        expect(reader.locator(".note", has_text="short one")).to_have_count(1, timeout=BOUND_MS)
        expect(author.locator(".note")).to_have_count(1)
        assert reader.locator(".note").count() == 1
    finally:
        server.stop()
