"""/metrics is complete enough for the dashboard in deploy/ (every series it uses exists)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp

from ..helpers import TIMEOUT, new_id, running_server
from ..redis.server import redis_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def series_used() -> set[str]:
    """Metric names the Grafana dashboard and the alert rules query."""
    texts = [(DEPLOY / "prometheus" / "alerts.yml").read_text()]
    dashboard = json.loads((DEPLOY / "grafana" / "cpc-signaling.json").read_text())
    for panel in dashboard["panels"]:
        texts += [target["expr"] for target in panel.get("targets", [])]
    return set(re.findall(r"\b(cpc_[a-z_]+)", "\n".join(texts)))


async def scrape(http: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(http + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def exposed(text: str) -> set[str]:
    """Series names: samples, and families declared without samples yet (labelled)."""
    samples = re.findall(r"^(cpc_[a-z_]+)", text, re.MULTILINE)
    declared = re.findall(r"^# HELP (cpc_[a-z_]+) ", text, re.MULTILINE)
    histograms = re.findall(r"^# TYPE (cpc_[a-z_]+) histogram$", text, re.MULTILINE)
    return {*samples, *declared, *(f"{h}_bucket" for h in histograms)}


async def test_dashboard_and_alerts_use_only_exposed_series() -> None:
    with redis_server() as redis:
        async with running_server(redis_url=redis.url) as srv:
            doc = new_id()
            async with srv.client() as a, srv.client() as b:
                await a.join(doc)
                await b.join(doc)
                await a.receive(TIMEOUT)
                await b.cursor(doc, 1, 1)
                await a.receive(TIMEOUT)
                text = await scrape(srv.http)
    names = exposed(text)
    missing = series_used() - names
    assert not missing, f"the dashboard/alerts use series /metrics lacks: {sorted(missing)}"
    for gauge in ("cpc_outbox_frames", "cpc_slow_readers", "cpc_redis_pending_events"):
        assert gauge in names
    assert "cpc_fanout_seconds_bucket" in names
    assert re.search(r"^cpc_backend_ready 1\.0$", text, re.MULTILINE)
    assert re.search(r"^cpc_redis_nodes_up 1\.0$", text, re.MULTILINE)
