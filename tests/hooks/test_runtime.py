"""Hooks from configuration: flags, startup problems, what the service runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from cpc_signaling.server import Config
from cpc_signaling.server.hooks import HookEvent, HookRuntime, Hooks, JoinRequest, hooks_problem

from ..helpers import UNIT, new_id
from .receiver import receiving


async def allow(request: JoinRequest) -> bool:
    return True


async def sink(events: Sequence[HookEvent]) -> None:
    return None


def test_flags_and_variables() -> None:
    config = Config.from_args(
        [
            "--join-webhook",
            "http://127.0.0.1:9/join",
            "--join-webhook-fail-open",
            "--join-webhook-cache",
            "5",
            "--event-webhook",
            "https://hooks.example.com/cpc",
        ],
        env={"CPC_WEBHOOK_SECRET": "k", "CPC_EVENT_WEBHOOK_QUEUE": "50"},
    )
    assert config.join_webhook == "http://127.0.0.1:9/join"
    assert config.join_webhook_fail_open is True
    assert config.join_webhook_cache == 5.0
    assert config.event_webhook == "https://hooks.example.com/cpc"
    assert config.webhook_secret == "k"
    assert config.event_webhook_queue == 50
    assert Config().join_webhook_fail_open is False
    assert hooks_problem(config) is None
    # An empty secret from the environment is not "no secret": it is refused at start.
    empty = Config.from_args([], env={"CPC_WEBHOOK_SECRET": ""})
    assert hooks_problem(empty) == "--webhook-secret is empty: give a real key or none"


@pytest.mark.parametrize(
    ("changes", "hooks", "problem"),
    [
        ({"join_webhook": "ftp://x/y"}, None, "--join-webhook must be an http"),
        ({"event_webhook": "localhost:8000/events"}, None, "--event-webhook must be an http"),
        ({"join_webhook": "http://h/j"}, Hooks(authorize_join=allow), "not both"),
        ({"event_webhook": "http://h/e"}, Hooks(on_events=sink), "not both"),
        ({"webhook_secret": ""}, None, "--webhook-secret is empty"),
        ({"join_webhook_timeout": 0.0}, None, "--join-webhook-timeout must be > 0"),
        ({"event_webhook_queue": 0}, None, "--event-webhook-queue must be > 0"),
        ({"join_webhook_cache": -1.0}, None, "--join-webhook-cache must be >= 0"),
    ],
)
def test_problems(changes: dict[str, object], hooks: Hooks | None, problem: str) -> None:
    config = replace(Config(), **changes)  # type: ignore[arg-type]
    found = hooks_problem(config, hooks)
    assert found is not None and problem in found
    with pytest.raises(ValueError, match=problem.split(" ")[0]):
        HookRuntime(config, hooks, CollectorRegistry(), "i")


async def test_without_hooks_nothing_runs() -> None:
    runtime = HookRuntime(Config(), None, CollectorRegistry(), "i")
    assert runtime.authorizer is None and runtime.events is None
    runtime.start()
    runtime.emit("join", new_id(), new_id(), b"{}", "client")  # a no-op
    await runtime.close()


async def test_webhooks_from_configuration(caplog: pytest.LogCaptureFixture) -> None:
    async with receiving("/join") as joins, receiving("/events") as events:
        config = replace(Config(), join_webhook=joins.url, event_webhook=events.url)
        runtime = HookRuntime(config, None, CollectorRegistry(), "i")
        assert any("webhooks are not signed" in r.getMessage() for r in caplog.records)
        runtime.start()
        try:
            assert runtime.authorizer is not None
            decision = await runtime.authorizer.authorize(JoinRequest(new_id(), new_id(), None))
            assert decision.allowed
            runtime.emit("leave", new_id(), new_id(), b'{"LeaveDocument":{}}', "client")
            await events.wait_for(1, 5 * UNIT)
        finally:
            await runtime.close()
    assert "X-CPC-Signature" not in joins.requests[0].headers  # no secret: unsigned


def test_a_bad_hook_option_is_a_one_line_startup_error(capsys: pytest.CaptureFixture[str]) -> None:
    from cpc_signaling.cli import main

    assert main(["serve", "--event-webhook", "localhost:9000/events"]) == 2
    err = capsys.readouterr().err
    assert "--event-webhook must be an http:// or https:// URL" in err
    assert "Traceback" not in err
