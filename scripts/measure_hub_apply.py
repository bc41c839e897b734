"""Cost of Hub.apply for one CursorUpdate in a document of 10 members (ns/event).

Usage: python scripts/measure_hub_apply.py [SRC_DIR]   (default: this tree's src/)
Compare two commits in one sitting: ``git archive REV src | tar -x -C /tmp/REV`` then
run against each, alternating, and compare medians (the machine may be shared).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parents[1] / "src"))

from cpc_signaling.core import Hub, Limits
from cpc_signaling.protocol import CursorUpdate, JoinDocument, Position


def main() -> None:
    hub: Hub[str] = Hub(instance_id="i", limits=Limits())
    doc = str(uuid.uuid4())
    conns = []
    for i in range(10):
        user = str(uuid.uuid4())
        conn = hub.connect(f"p{i}", user_id=user)
        hub.apply(*hub.receive(conn, JoinDocument(document_id=doc, user_id=user)))
        conns.append(conn)
    first = conns[0]
    assert first.user_id is not None
    cursor = CursorUpdate(
        document_id=doc,
        user_id=first.user_id,
        position=Position(line=1, column=2),
        timestamp="2026-01-01T00:00:00Z",
    )
    doc_id, event = hub.receive(first, cursor)
    n, runs = 200_000, []
    for _ in range(15):
        started = time.perf_counter()
        for _ in range(n):
            hub.apply(doc_id, event)
        runs.append((time.perf_counter() - started) / n * 1e9)
    print(
        f"Hub.apply(CursorUpdate), 10 members: median {statistics.median(runs):.0f} ns/event "
        f"(min {min(runs):.0f})"
    )


if __name__ == "__main__":
    main()
