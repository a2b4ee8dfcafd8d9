"""The HTTP side port (default 127.0.0.1:9090): metrics, health, admin API, dashboard and MCP.

``Broker.start()`` does ``HttpSidePort(broker)`` + ``await start()`` when ``http_port`` is non-zero
and ``await stop()`` at shutdown.  See ``app.py`` for the routes.
"""
from .app import HttpSidePort

__all__ = ["HttpSidePort"]
