"""mq9fast: a fast, durable mq9 broker (agent registry + persistent mailboxes) over NATS."""
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["__version__", "Mq9Client", "Priority", "Message", "Mq9Error"]

if TYPE_CHECKING:  # pragma: no cover
    from .client import Message, Mq9Client, Mq9Error, Priority

_CLIENT_EXPORTS = ("Mq9Client", "Priority", "Message", "Mq9Error")


def __getattr__(name: str) -> Any:
    # The client (and nats-py) is imported on first use, so the broker process does not load it.
    if name in _CLIENT_EXPORTS:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'mq9fast' has no attribute {name!r}")
