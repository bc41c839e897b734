"""Hooks for the application: authorize joins, and receive joins, leaves, annotations
and comments as events (docs/hooks.md).

Embedders pass async callables (``Service(config, hooks=Hooks(...))``); the
standalone server calls webhooks (``--join-webhook``, ``--event-webhook``),
signed with ``--webhook-secret``. Modules:

* ``authorize``: :class:`JoinAuthorizer` (timeout, cache, coalescing, fail policy)
  and the join webhook.
* ``events``: :class:`HookEvent`, the bounded retrying :class:`EventQueue` and the
  event webhook.
* ``signing``: the ``X-CPC-Signature`` header; :func:`verify_signature` for receivers.
* ``webhook``: the HTTP client (aiohttp).
* ``runtime``: :class:`Hooks` and what the service runs (:class:`HookRuntime`).
"""

from ...errors import JoinDenied
from .authorize import JoinAuthorizer, JoinRequest
from .events import EVENT_TYPES, EventQueue, HookEvent
from .runtime import HookRuntime, Hooks, hooks_problem
from .signing import SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "EventQueue",
    "HookEvent",
    "HookRuntime",
    "Hooks",
    "JoinAuthorizer",
    "JoinDenied",
    "JoinRequest",
    "hooks_problem",
    "sign",
    "verify_signature",
]
