"""Every exception the package raises on purpose, in one tree.

::

    CpcError                      the base: ``except CpcError`` catches all of these
    ├── ProtocolError             a peer sent something that is not a valid message, or
    │                             that the rules refuse (``code``: an ErrorCode; ``message``
    │                             is safe to send back to the peer)
    ├── AuthError                 a token is refused (``message`` is safe to send)
    ├── Unavailable               the service cannot act now: draining, or its backend is
    │                             not ready or overloaded (the HTTP API answers 503)
    ├── BackendError              the shared store (Redis) misbehaved or refused
    │   ├── BackendStartError     the backend must not start (an instance id in use,
    │   │                         --redis-strict and an evicting Redis); a clear message
    │   ├── ConnectionLost        the connection to Redis is gone (also a ConnectionError)
    │   └── ReplyError            Redis answered a command with an error
    ├── JoinDenied                raised by an application's join check to deny a join,
    │                             with the reason the client sees
    ├── HookError                 the application's hooks gave no usable answer
    │   ├── WebhookError          a webhook request got no HTTP answer (timeout, connection)
    │   ├── CheckFailed           a join check gave no usable answer
    │   └── DeliveryFailed        an event batch was not accepted
    └── ClientError               the Python client cannot do what was asked (cannot
        │                         connect, not connected, closed)
        └── JoinError             the server refused a join (``code``, ``message``, ``error``)

Two kinds of failure stay outside the tree, as in the standard library: misuse of the
API (a wrong type, a value out of range, a configuration that cannot work) raises
``TypeError`` or ``ValueError``; a join the server never answers raises ``TimeoutError``.
The peer misbehaving (``ProtocolError``, ``AuthError``) is never the caller's bug: the
server answers it with the protocol's ``Error`` and carries on.

Nothing here imports the rest of the package, so every layer (the sans-I/O core too)
can raise these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.messages import Error

__all__ = [
    "AuthError",
    "BackendError",
    "BackendStartError",
    "CheckFailed",
    "ClientError",
    "ConnectionLost",
    "CpcError",
    "DeliveryFailed",
    "HookError",
    "JoinDenied",
    "JoinError",
    "ProtocolError",
    "ReplyError",
    "Unavailable",
    "WebhookError",
]


class CpcError(Exception):
    """The base of every exception cpc-signaling raises on purpose."""


class ProtocolError(CpcError):
    """A peer sent something that is not a valid message, or that the rules refuse.

    ``code`` is one of :class:`~cpc_signaling.protocol.ErrorCode`; ``message`` is safe
    to send back to the peer.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AuthError(CpcError):
    """The token is refused; ``message`` says why and is safe to send to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unavailable(CpcError):
    """The service cannot act now (draining, or its backend is not ready or overloaded)."""


class BackendError(CpcError):
    """The shared store misbehaved or refused."""


class BackendStartError(BackendError):
    """The backend must not start (say, its instance id is in use); a clear message."""


class ConnectionLost(BackendError, ConnectionError):
    """The connection to Redis is gone (or never came up)."""


class ReplyError(BackendError):
    """Redis answered a command with an error reply."""


class JoinDenied(CpcError):
    """Raised by an application's join check to deny a join, with the reason the client sees."""

    def __init__(self, reason: str = "not allowed by the application") -> None:
        super().__init__(reason)
        self.reason = reason


class HookError(CpcError):
    """An application hook gave no usable answer; ``reason`` labels it in metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class WebhookError(HookError):
    """A webhook request got no HTTP answer: ``reason`` is ``timeout`` or ``connection``."""


class CheckFailed(HookError):
    """A join check gave no usable answer."""


class DeliveryFailed(HookError):
    """An event batch was not accepted by the event hook."""


class ClientError(CpcError):
    """The client cannot do what was asked (cannot connect, not connected, closed)."""


class JoinError(ClientError):
    """The server refused a join; ``code`` and ``message`` are its ``Error``'s."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code
        self.message = error.message
