"""The metrics and health HTTP server: `/metrics`, `/health/queues`, `/health/live`.

A minimal HTTP/1.1 server in the event loop of the worker (or of `bullwait serve`): one
request per connection, GET/HEAD only, bounded header size. Each `/metrics` or
`/health/queues` request reads every queue from Redis in one pipelined round trip, with a
timeout, so a hung Redis gives 503 quickly.

It shares the worker's file descriptors, so it must never take them all (slowloris: a few
hundred half-open connections once starved a worker's WhatsApp sends). Its own accept loop
accepts a connection only when one of a few slots is free (the rest wait in the kernel's
backlog, costing the process nothing), the whole request head must arrive within a deadline,
and writes have one too. Trouble is logged as one structured line per kind and interval,
never a traceback per connection (asyncio's own accept loop logged one per failed accept).

    async with monitoring(settings, queues, registry) as server:
        ...  # server.port is the bound port (METRICS_PORT=0 picks a free one)
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from redis.asyncio.sentinel import MasterNotFoundError

from bullwait.engine.connection import (
    cluster_redirect,
    describe_redis,
    no_master_reason,
    redis_client,
    short_reason,
)
from bullwait.errors import MonitoringUnavailable
from bullwait.logs import get_logger
from bullwait.monitoring.health import LoopWatch, evaluate, redis_down
from bullwait.monitoring.metrics import QueueCollector, new_registry
from bullwait.ops.snapshot import QueueSnapshot, read_snapshots
from bullwait.settings import Settings

MAX_HEADER_BYTES = 16 * 1024
HEADER_DEADLINE = 5.0  # seconds for the whole request head: trickling bytes does not extend it
WRITE_DEADLINE = 5.0  # seconds to hand over the response to a client that may not read
MAX_CONNECTIONS = 32
FD_SHARE = 16  # at most 1/FD_SHARE of RLIMIT_NOFILE for this server: the rest is the worker's
ACCEPT_RETRY_SECONDS = 1.0
LOG_INTERVAL = 30.0  # seconds between two lines about the same kind of trouble
BACKLOG = 128
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    503: "Service Unavailable",
}


def connection_limit(max_connections: int = MAX_CONNECTIONS) -> int:
    """Concurrent connections this server may hold, from the process's file-descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft // FD_SHARE))


class ThrottledLog:
    """One warning per kind of trouble and interval, carrying how often it happened meanwhile."""

    def __init__(self, log: Any, interval: float = LOG_INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def warn(self, kind: str, message: str, **fields: Any) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            return
        self._last[kind] = now
        count = self._counts.pop(kind)
        self.log.warning(message, kind=kind, count=count, intervalSeconds=self.interval, **fields)


class Monitor:
    """Reads the queues and renders metrics and health; no HTTP here."""

    def __init__(
        self,
        settings: Settings,
        queues: list[str],
        registry: CollectorRegistry | None = None,
        loops: LoopWatch | None = None,
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.loops = loops if loops is not None else LoopWatch()
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
        except MasterNotFoundError as exc:
            return 503, redis_down(self.queues, no_master_reason(self.settings, exc))
        except Exception as exc:  # noqa: BLE001
            redirect = cluster_redirect(self.settings, exc)
            if redirect is not None:
                return 503, redis_down(self.queues, str(redirect))
            reason = (
                "timed out"
                if isinstance(exc, asyncio.TimeoutError)
                else (str(exc).splitlines() or [type(exc).__name__])[0]
            )
            return 503, redis_down(self.queues, f"{describe_redis(self.settings)} did not answer ({reason[:160]})")
        doc = evaluate(snaps, self.settings.health_max_failed)
        return (200 if doc["healthy"] else 503), doc

    def live(self) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "uptimeSeconds": round(time.time() - self.started, 1)}

    async def liveness(self) -> tuple[int, dict[str, Any]]:
        """`live()`, except that a process whose worker loop keeps failing (any cause: Redis
        refusing commands, a cluster node answering MOVED to a one-node client, ...) is not
        live, nor with Sentinel one that reaches no master: a worker that cannot process should
        be restarted or taken out, not reported fine."""
        doc = self.live()
        failing = self.loops.failing(self.settings.health_live_failing_seconds)
        if failing:
            return 503, {**doc, "status": "worker-failing", "problem": "; ".join(failing)}
        if self.settings.sentinel is None:
            return 200, doc
        timeout = self.settings.health_redis_timeout
        try:
            await asyncio.wait_for(self._redis().ping(), timeout=timeout + 0.5)
        except MasterNotFoundError as exc:
            return 503, {**doc, "status": "no-master", "problem": no_master_reason(self.settings, exc)}
        except Exception as exc:  # noqa: BLE001 - any failure to reach the master
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else short_reason(exc)
            problem = f"the master named by {describe_redis(self.settings)} did not answer ({reason})"
            return 503, {**doc, "status": "no-master", "problem": problem}
        return 200, doc

    async def close(self) -> None:
        with suppress(KeyError):
            self.registry.unregister(self.collector)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class MonitorServer:
    """The HTTP front of a `Monitor`."""

    def __init__(
        self, monitor: Monitor, host: str, port: int, log: Any = None, max_connections: int | None = None
    ) -> None:
        self.monitor = monitor
        self.host = host
        self.requested_port = port
        self.port = 0
        self.log = log or get_logger()
        self.max_connections = max_connections or connection_limit()
        self.trouble = ThrottledLog(self.log)
        self._sockets: list[socket.socket] = []
        self._slots = asyncio.Semaphore(self.max_connections)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, fallback: bool = False) -> MonitorServer:
        """Bind and listen. `fallback`: when the port is in use, take a free one and say so
        (for the default METRICS_PORT; a port the operator chose is kept or refused)."""
        try:
            self._sockets = await _listen(self.host, self.requested_port)
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
        sockname = self._sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        for sock in self._sockets:
            self._spawn(self._accept_loop(sock))
        self.log.info(
            "monitoring server listening",
            host=self.host,
            port=self.port,
            url=f"http://{self.host}:{self.port}/metrics",
            queues=self.monitor.queues,
            maxConnections=self.max_connections,
        )
        return self

    async def close(self) -> None:
        # Accepts are cancelled before their sockets close: a cancelled sock_accept removes
        # its reader by descriptor, which a socket opened meanwhile could have taken.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        await self.monitor.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept only into a free slot: beyond the limit, clients wait in the kernel's backlog."""
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError as exc:  # EMFILE/ENFILE: the worker's descriptors are gone; back off, do not spin
                self._slots.release()
                self.trouble.warn(
                    "accept",
                    "monitoring server cannot accept connections",
                    error=_os_error(exc),
                    retryInSeconds=ACCEPT_RETRY_SECONDS,
                )
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if self._slots.locked():
                self.trouble.warn(
                    "busy",
                    "monitoring server at its connection limit; further clients wait",
                    maxConnections=self.max_connections,
                )
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            except OSError:
                conn.close()
                return
            await self._handle(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        finally:
            self._slots.release()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_DEADLINE)
            status, body, ctype, method = await self._respond(head)
        except TimeoutError:
            self.trouble.warn(
                "slow-client",
                "monitoring client sent no complete request in time; closed",
                deadlineSeconds=HEADER_DEADLINE,
            )
            status, body, ctype, method = 408, b"request timeout\n", "text/plain; charset=utf-8", "GET"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            status, body, ctype, method = 400, b"bad request\n", "text/plain; charset=utf-8", "GET"
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker
            self.log.error("monitoring request failed", error=str(exc) or type(exc).__name__)
            status, body, ctype, method = 503, b"internal error\n", "text/plain; charset=utf-8", "GET"
        headers = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        await _send_and_close(writer, headers.encode("latin-1") + (b"" if method == "HEAD" else body))

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
            status, doc = await self.monitor.liveness()
            return status, _json(doc), "application/json", method
        if path == "/":
            return 200, b"bullwait: /metrics /health/queues /health/live\n", "text/plain; charset=utf-8", method
        return 404, b"not found: try /metrics, /health/queues or /health/live\n", "text/plain; charset=utf-8", method


async def _send_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, then close; a client that does not read loses its connection after the deadline."""
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_DEADLINE)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), WRITE_DEADLINE)
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()  # no-op once closed; frees the descriptor of a stuck one now


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, as asyncio.start_server would bind them."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # or binding :: would also take 0.0.0.0's port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _os_error(exc: OSError) -> str:
    return os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else (exc.strerror or str(exc))


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    reason = _os_error(exc).lower()
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot serve metrics on {host}:{port} ({reason}; another bullwait process?): run several workers "
            "as one `bullwait worker --processes N` (one server for all), give each its own METRICS_PORT "
            "(0 = any free port, logged), or set QUEUE_MONITORING_ENABLED=false"
        )
    return (
        f"cannot serve metrics on {host}:{port} ({reason}): "
        "set METRICS_PORT / METRICS_HOST to a free address, or QUEUE_MONITORING_ENABLED=false"
    )


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


@asynccontextmanager
async def monitoring(
    settings: Settings,
    queues: list[str],
    registry: CollectorRegistry | None = None,
    log: Any = None,
    loops: LoopWatch | None = None,
) -> AsyncIterator[MonitorServer | None]:
    """Run the server for the block (None when QUEUE_MONITORING_ENABLED=false)."""
    logger = log or get_logger()
    if not settings.queue_monitoring_enabled:
        logger.info("monitoring disabled", setting="QUEUE_MONITORING_ENABLED=false")
        yield None
        return
    server = MonitorServer(
        Monitor(settings, queues, registry, loops), settings.metrics_host, settings.metrics_port, logger
    )
    # A second worker on one host finds the default port taken: it moves (and logs where);
    # a METRICS_PORT the operator set is held to, as a scrape target depends on it.
    await server.start(fallback="metrics_port" not in settings.model_fields_set)
    try:
        yield server
    finally:
        await server.close()
