"""The HTTP side port: Starlette app served by uvicorn inside the broker's own event loop.

Routes (all JSON unless noted; bad parameters -> 4xx ``{"error": "..."}``; a failing handler ->
500 ``{"error": "internal error: ..."}``, never a broker crash):

=============================== ================================================================
``GET /metrics``                Prometheus text format (``prometheus_client``), ``mq9fast_*``
``GET /healthz``                200 while the process runs
``GET /readyz``                 200 when storage is open and the NATS listener accepts, else 503
``GET /varz``                   snapshot: server counters, storage, services, commands, config
``GET /api/overview``           what the dashboard polls: varz + mailbox/registry statistics
                                (connections, traffic and commands summed over all workers)
``GET /api/mailboxes``          ``?limit=&page=`` or ``?limit=&offset=``, ``&prefix=``
``GET /api/agents``             same paging; card, mailbox, last report
``GET /`` , ``/dashboard``      the dashboard page (static HTML/JS/CSS from the package)
``POST /mcp``                   MCP (streamable HTTP, stateless, JSON responses), §9
``GET /.well-known/oauth-protected-resource[/mcp]``  MCP discovery helper (no auth), §9.1
=============================== ================================================================
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from . import services
from .metrics import Metrics

log = logging.getLogger("mq9fast.http")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_SECRET_FIELDS = ("auth_token", "password", "user")


class BadRequest(Exception):
    pass


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise BadRequest(f"{name} must be {rng}, got {value}")
    return value


def paging(request: Request) -> tuple[int, int, int]:
    """(offset, limit, page) from ``limit`` + ``page`` (1-based) or ``limit`` + ``offset``."""
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    assert limit is not None
    page = _int_param(request, "page", None, 1)
    offset = _int_param(request, "offset", None, 0)
    if page is not None and offset is not None:
        raise BadRequest("give either page or offset, not both")
    if offset is None:
        offset = ((page or 1) - 1) * limit
    return offset, limit, offset // limit + 1


class HttpSidePort:
    """Built and started by ``Broker.start()`` when ``http_port`` is non-zero."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        cfg = broker.config
        self.host: str = cfg.http_host
        self.port: int = cfg.http_port
        self.metrics = Metrics(broker)
        # MCP is loaded on the first /mcp request (importing the SDK takes about a second)
        self.mcp: Any = None
        self.mcp_error: str | None = None
        self._mcp_lock = asyncio.Lock()
        self._mcp_task: asyncio.Task | None = None
        self._mcp_stop = asyncio.Event()
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self.started = time.time()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.metrics.install()
        sock = _bind(self.host, self.port)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                ws="none", timeout_graceful_shutdown=2, server_header=False,
                                date_header=True)
        config.load()
        server = _EmbeddedUvicorn(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except SystemExit:  # uvicorn exits the process on start-up failure; we must not
            sock.close()
            raise RuntimeError("HTTP side port failed to start (see the log)") from None
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.main_loop(), name="mq9fast-http")
        log.info("HTTP side port on http://%s:%d (metrics, health, admin, dashboard, mcp)",
                 self.host, self.port)

    async def stop(self) -> None:
        self.metrics.uninstall()
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        with contextlib.suppress(Exception):
            await server.shutdown(sockets=[self._sock] if self._sock else None)
        self._mcp_stop.set()
        if self._mcp_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mcp_task, 5)

    # -- MCP (lazy) -----------------------------------------------------------------------------
    async def ensure_mcp(self) -> Any:
        """The MCP endpoint, built and its session manager started on first use (None if broken)."""
        if self.mcp is not None or self.mcp_error is not None:
            return self.mcp
        async with self._mcp_lock:
            if self.mcp is not None or self.mcp_error is not None:
                return self.mcp
            try:
                from .mcp_server import McpEndpoint

                endpoint = McpEndpoint(self.broker, self.host)
            except Exception as exc:  # noqa: BLE001 - the rest of the side port still works
                self.mcp_error = f"MCP endpoint unavailable: {exc}"
                log.warning("%s", self.mcp_error)
                return None
            started = asyncio.get_running_loop().create_future()

            async def run_manager() -> None:
                # the manager's task group must be entered and left in this one task
                try:
                    async with endpoint.manager.run():
                        started.set_result(True)
                        await self._mcp_stop.wait()
                except BaseException as exc:  # noqa: BLE001
                    if not started.done():
                        started.set_exception(exc)
                    raise

            self._mcp_task = asyncio.get_running_loop().create_task(run_manager(), name="mq9fast-mcp")
            try:
                await started
            except Exception as exc:  # noqa: BLE001
                self.mcp_error = f"MCP endpoint unavailable: {exc}"
                log.warning("%s", self.mcp_error)
                return None
            self.mcp = endpoint
            return endpoint

    # -- app ------------------------------------------------------------------------------------
    def _build_app(self) -> Starlette:
        routes = [
            Route("/", self.index),
            Route("/dashboard", self.dashboard),
            Route("/metrics", self.metrics_endpoint),
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/varz", self.varz),
            Route("/api", self.api_index),
            Route("/api/overview", self.overview),
            Route("/api/mailboxes", self.mailboxes),
            Route("/api/agents", self.agents),
            Route("/.well-known/oauth-protected-resource", self.oauth_resource),
            Route("/.well-known/oauth-protected-resource/mcp", self.oauth_resource),
            Route("/register", self.oauth_register, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ]
        routes.append(Route("/mcp", endpoint=_LazyMcp(self), methods=["GET", "POST", "DELETE"]))
        return Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_error, BadRequest: self._bad_request, Exception: self._internal_error})

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def _bad_request(self, request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {exc}")

    # -- handlers -------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return RedirectResponse("/dashboard", status_code=302)

    async def dashboard(self, request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "dashboard.html"), media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def metrics_endpoint(self, request: Request) -> Response:
        await self.metrics.refresh()  # --workers N: the other workers' figures
        data = generate_latest(self.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "pid": os.getpid()})

    def readiness(self) -> dict[str, Any]:
        b = self.broker
        checks: dict[str, bool] = {}
        store = b.store
        ok = False
        if store is not None and not getattr(store, "_closed", False):
            try:
                store.env.stat()
                ok = True
            except Exception:  # noqa: BLE001 - closed or broken environment
                ok = False
        checks["storage"] = ok
        server = b.server
        accepting = False
        if server is not None:
            listeners = getattr(server, "_servers", None)
            if listeners is None:
                accepting = bool(getattr(server, "port", 0))
            else:
                accepting = any(getattr(s, "is_serving", lambda: True)() for s in listeners)
        stopping = getattr(b, "_stop", None)
        if stopping is not None and stopping.is_set():
            accepting = False
        checks["nats"] = accepting
        checks["mailbox"] = b.mailbox is not None
        checks["registry"] = b.registry is not None
        ready = checks["storage"] and checks["nats"]
        return {"status": "ready" if ready else "not ready", "checks": checks}

    async def readyz(self, request: Request) -> Response:
        body = self.readiness()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    def snapshot(self, all_workers: bool = False) -> dict[str, Any]:
        """This worker's figures; ``all_workers``: connections, traffic, slow consumers, command
        counts and parked FETCHes summed over the workers (as of the last ``metrics.refresh()``)."""
        b = self.broker
        collector = self.metrics.collector
        out: dict[str, Any] = {}
        if b.server is not None:
            out.update(b.server.varz())
            in_m, out_m, in_b, out_b = collector.traffic.read(b.server)
            out["total_in_msgs"], out["total_out_msgs"] = in_m, out_m
            out["total_in_bytes"], out["total_out_bytes"] = in_b, out_b
            if all_workers:
                t = collector.totals()
                out["connections"], out["slow_consumers"] = t["connections"], t["slow_consumers"]
                out["total_in_msgs"], out["total_out_msgs"] = t["in_msgs"], t["out_msgs"]
                out["total_in_bytes"], out["total_out_bytes"] = t["in_bytes"], t["out_bytes"]
        out["mq9fast_version"] = __version__
        out["http"] = {"host": self.host, "port": self.port,
                       "mcp": "error" if self.mcp_error else ("loaded" if self.mcp is not None else "on first use")}
        store = b.store
        if store is not None:
            out["storage"] = {"path": store.path, "fsync": store.fsync, "batches": store.batches,
                              "batched_writes": store.batched_writes, "last_batch_size": store.last_batch_size,
                              "max_batch_size": store.max_batch_size, "full": store.full,
                              "room_bytes": store.room, "reserve_bytes": store.reserve}
        if b.control is not None:
            counts = collector.command_counts() if all_workers else dict(b.control.counts)
            out["commands"] = {f"{c}:{o}": n for (c, o), n in sorted(counts.items())}
        out["mailbox"] = collector.mailbox_stats() if all_workers else services.mailbox_stats(b)
        out["registry"] = services.registry_stats(b)
        index_info = getattr(b.registry, "index_info", None)
        if index_info is not None:
            out["registry_index"] = index_info()  # this worker's vector index (see worker_varz)
        out["config"] = {k: v for k, v in vars(b.config).items() if k not in _SECRET_FIELDS}
        out["ready"] = self.readiness()
        return out

    async def varz(self, request: Request) -> Response:
        snap = self.snapshot()
        if getattr(self.broker, "cluster", None) is not None:
            snap["workers"] = await self.broker.workers_varz()  # per-worker figures
        return JSONResponse(snap)

    async def api_index(self, request: Request) -> Response:
        return JSONResponse({"endpoints": ["/api/overview", "/api/mailboxes", "/api/agents", "/varz", "/metrics",
                                           "/healthz", "/readyz", "/mcp", "/dashboard"],
                             "paging": "limit (1-1000, default 50) with page (1-based) or offset"})

    async def overview(self, request: Request) -> Response:
        await self.metrics.refresh()
        snap = self.snapshot(all_workers=True)
        snap.pop("config", None)
        return JSONResponse(snap)

    async def mailboxes(self, request: Request) -> Response:
        offset, limit, page = paging(request)
        prefix = request.query_params.get("prefix") or None
        try:
            total, items = await services.list_mailboxes(self.broker, offset, limit, prefix)
        except services.Unavailable as exc:
            return _error(503, str(exc))
        return JSONResponse({"total": total, "offset": offset, "limit": limit, "page": page, "items": items})

    async def agents(self, request: Request) -> Response:
        offset, limit, page = paging(request)
        prefix = request.query_params.get("prefix") or None
        try:
            total, items = await services.list_agents(self.broker, offset, limit, prefix)
        except services.Unavailable as exc:
            return _error(503, str(exc))
        except services.CommandError as exc:
            return _error(502, exc.text)
        now = time.time()
        for item in items:
            t = item.get("last_report_time")
            item["last_report_age_s"] = round(now - float(t), 3) if isinstance(t, (int, float)) and t else None
        return JSONResponse({"total": total, "offset": offset, "limit": limit, "page": page, "items": items})

    async def oauth_resource(self, request: Request) -> Response:
        proto = request.headers.get("x-forwarded-proto", "http")
        host = request.headers.get("host", f"{self.host}:{self.port}")
        return JSONResponse({"resource": f"{proto}://{host}/mcp", "bearer_methods_supported": [],
                             "resource_documentation": "https://github.com/robustmq/robustmq"})

    async def oauth_register(self, request: Request) -> Response:
        return JSONResponse({"error": "invalid_client_metadata",
                             "error_description": "Dynamic client registration is not supported. "
                                                  "No authentication required."}, status_code=400)



class _LazyMcp:
    """ASGI app for ``/mcp``: loads the MCP endpoint on first use, then delegates to it."""

    def __init__(self, port: HttpSidePort) -> None:
        self.port = port

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("method") == "GET":  # no server-to-client stream in stateless JSON mode (§9.3)
            response: Response = JSONResponse({"error": "method not allowed: POST JSON-RPC requests to /mcp"},
                                              status_code=405, headers={"Allow": "POST"})
            await response(scope, receive, send)
            return
        endpoint = await self.port.ensure_mcp()
        if endpoint is None:
            await _error(503, self.port.mcp_error or "MCP endpoint unavailable")(scope, receive, send)
            return
        await endpoint(scope, receive, send)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside someone else's loop: the broker owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(512)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"HTTP side port {host}:{port}: {exc.strerror}") from None
    return sock
