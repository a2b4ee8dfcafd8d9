"""mq9fast: a fast, durable mq9 broker (agent registry + persistent mailboxes) over NATS."""
from ._version import __version__

__all__ = ["__version__"]
