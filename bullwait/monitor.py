"""The metrics and health HTTP server: `/metrics`, `/health/queues`, `/health/live`.

A minimal HTTP/1.1 server on `asyncio.start_server`, in the event loop of the worker
(or of `bullwait serve`): one request per connection, GET/HEAD only, bounded header
size and read time. Each `/metrics` or `/health/queues` request reads every queue from
Redis in one pipelined round trip, with a timeout, so a hung Redis gives 503 quickly.

    async with monitoring(settings, queues, registry) as server:
        ...  # server.port is the bound port (METRICS_PORT=0 picks a free one)
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bullwait.connection import describe_redis, redis_client
from bullwait.errors import MonitoringUnavailable
from bullwait.health import evaluate, redis_down
from bullwait.logging import get_logger
from bullwait.metrics import QueueCollector, new_registry
from bullwait.settings import Settings
from bullwait.snapshot import QueueSnapshot, read_snapshots

MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT = 10.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


class Monitor:
    """Reads the queues and renders metrics and health; no HTTP here."""

    def __init__(self, settings: Settings, queues: list[str], registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.queues = queues
        self.registry = registry if registry is not None else new_registry()
        self.collector = QueueCollector()
        self.registry.register(self.collector)
        self._client: Any = None
        self.started = time.time()

    def _redis(self) -> Any:
        if self._client is None:
            timeout = self.settings.health_redis_timeout
            self._client = redis_client(self.settings, socket_timeout=timeout, retry_on_timeout=False)
        return self._client

    async def snapshot(self) -> list[QueueSnapshot]:
        """All queues in one round trip; raises on Redis errors or after the timeout."""
        timeout = self.settings.health_redis_timeout
        return await asyncio.wait_for(
            read_snapshots(self._redis(), self.settings.bullmq_prefix, self.queues), timeout=timeout + 0.5
        )

    async def metrics(self, accept: str = "") -> tuple[bytes, str]:
        started = time.perf_counter()
        try:
            snaps: list[QueueSnapshot] | None = await self.snapshot()
        except Exception:  # noqa: BLE001 - reported as bullmq_redis_up 0
            snaps = None
        encoder, content_type = choose_encoder(accept)
        self.collector.set_snapshot(snaps, time.perf_counter() - started)
        return encoder(self.registry), content_type

    async def health(self) -> tuple[int, dict[str, Any]]:
        try:
            snaps = await self.snapshot()
        except Exception as exc:  # noqa: BLE001
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (str(exc).splitlines() or [type(exc).__name__])[0]
            return 503, redis_down(self.queues, f"{describe_redis(self.settings)} did not answer ({reason[:160]})")
        doc = evaluate(snaps, self.settings.health_max_failed)
        return (200 if doc["healthy"] else 503), doc

    def live(self) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "uptimeSeconds": round(time.time() - self.started, 1)}

    async def close(self) -> None:
        try:
            self.registry.unregister(self.collector)
        except KeyError:
            pass
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class MonitorServer:
    """The HTTP front of a `Monitor`."""

    def __init__(self, monitor: Monitor, host: str, port: int, log: Any = None) -> None:
        self.monitor = monitor
        self.host = host
        self.requested_port = port
        self.port = 0
        self.log = log or get_logger()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, fallback: bool = False) -> "MonitorServer":
        """Bind and listen. `fallback`: when the port is in use, take a free one and say so
        (for the default METRICS_PORT; a port the operator chose is kept or refused)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.requested_port, reuse_address=True)
        except OSError as exc:
            if fallback and exc.errno == errno.EADDRINUSE and self.requested_port:
                self.log.warning(
                    "metrics port in use (another worker?), serving on a free port instead",
                    wanted=self.requested_port,
                    advice="give each worker its own METRICS_PORT for a fixed scrape target, "
                    "or run one worker with --processes N (one server for all)",
                )
                self.requested_port = 0
                return await self.start()
            raise MonitoringUnavailable(_bind_problem(self.host, self.requested_port, exc)) from None
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        self.log.info(
            "monitoring server listening",
            host=self.host,
            port=self.port,
            url=f"http://{self.host}:{self.port}/metrics",
            queues=self.monitor.queues,
        )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.monitor.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            status, body, ctype, method = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError, ValueError):
            status, body, ctype, method = 400, b"bad request\n", "text/plain; charset=utf-8", "GET"
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker
            self.log.error("monitoring request failed", error=str(exc) or type(exc).__name__)
            status, body, ctype, method = 503, b"internal error\n", "text/plain; charset=utf-8", "GET"
        try:
            headers = (
                f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _respond(self, head: bytes) -> tuple[int, bytes, str, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, b"only GET and HEAD\n", "text/plain; charset=utf-8", method
        if path == "/metrics":
            body, ctype = await self.monitor.metrics(headers.get("accept", ""))
            return 200, body, ctype, method
        if path == "/health/queues":
            status, doc = await self.monitor.health()
            return status, _json(doc), "application/json", method
        if path in ("/health/live", "/health"):
            return 200, _json(self.monitor.live()), "application/json", method
        if path == "/":
            return 200, b"bullwait: /metrics /health/queues /health/live\n", "text/plain; charset=utf-8", method
        return 404, b"not found: try /metrics, /health/queues or /health/live\n", "text/plain; charset=utf-8", method


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    code = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
    reason = os.strerror(code).lower() if code else (exc.strerror or str(exc))
    if code == errno.EADDRINUSE:
        return (f"cannot serve metrics on {host}:{port} ({reason}; another bullwait process?): run several workers "
                "as one `bullwait worker --processes N` (one server for all), give each its own METRICS_PORT "
                "(0 = any free port, logged), or set QUEUE_MONITORING_ENABLED=false")
    return (f"cannot serve metrics on {host}:{port} ({reason}): "
            "set METRICS_PORT / METRICS_HOST to a free address, or QUEUE_MONITORING_ENABLED=false")


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


@asynccontextmanager
async def monitoring(
    settings: Settings, queues: list[str], registry: CollectorRegistry | None = None, log: Any = None
) -> AsyncIterator[MonitorServer | None]:
    """Run the server for the block (None when QUEUE_MONITORING_ENABLED=false)."""
    logger = log or get_logger()
    if not settings.queue_monitoring_enabled:
        logger.info("monitoring disabled", setting="QUEUE_MONITORING_ENABLED=false")
        yield None
        return
    server = MonitorServer(Monitor(settings, queues, registry), settings.metrics_host, settings.metrics_port, logger)
    # A second worker on one host finds the default port taken: it moves (and logs where);
    # a METRICS_PORT the operator set is held to, as a scrape target depends on it.
    await server.start(fallback="metrics_port" not in settings.model_fields_set)
    try:
        yield server
    finally:
        await server.close()
