"""The sans-I/O core: document state, membership and routing. No sockets, no Redis."""

from .errors import ErrorBudget
from .events import Event, Joined, Left, Relayed
from .hub import ConflationKey, Connection, Hub, Limits, Send
from .state import PRESENCE_KINDS, STORED_KINDS, DocumentState, Outcome

__all__ = [
    "PRESENCE_KINDS",
    "STORED_KINDS",
    "ConflationKey",
    "Connection",
    "DocumentState",
    "ErrorBudget",
    "Event",
    "Hub",
    "Joined",
    "Left",
    "Limits",
    "Outcome",
    "Relayed",
    "Send",
]
