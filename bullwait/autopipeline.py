"""`AutoPipeline`: a worker's Lua calls travel together on one connection.

A worker running `concurrency` jobs finishes many of them in the same turn of the
event loop. Through redis-py each `moveToFinished` takes its own connection from the
pool, its own write and its own read: at 1,000+ jobs/s the worker spent most of its
time in socket calls, and Redis answered ten sockets one command at a time. Node's
ioredis instead queues commands on one connection and writes them together.

`AutoPipeline` does the same for the scripts it is given: calls are queued, written
together on one dedicated connection, and their replies are read in order by one reader
task. Nothing about the commands changes (the official bullmq scripts by SHA, same keys
and arguments), only how they travel.

Failures fall back to the ordinary client, which has the retry policy and loads
scripts: a lost connection (every call without a reply is re-sent through the client,
as redis-py itself would retry it). `NOSCRIPT` (first use, `SCRIPT FLUSH`, failover)
loads the script once and sends the calls again. Other error replies are raised to
their caller unchanged.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Resend(Exception):
    """The call was not sent; send it through the ordinary client instead."""


_RESEND = (RedisConnectionError, RedisTimeoutError, OSError, _Resend)


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in RESP, as redis-py's `pack_command` writes it (str, bytes, int, float)."""
    out = [b"*%d\r\n" % len(command)]
    append = out.append
    for arg in command:
        kind = type(arg)
        if kind is str:
            arg = arg.encode()
        elif kind is int:
            arg = b"%d" % arg
        elif kind is not bytes:
            arg = _encode_other(arg)
        append(b"$%d\r\n" % len(arg))
        append(arg)
        append(b"\r\n")
    return b"".join(out)


def _encode_other(arg: Any) -> bytes:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
        raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
    if isinstance(arg, str):
        return arg.encode()
    return repr(arg).encode() if isinstance(arg, float) else b"%d" % arg


class AutoPipeline:
    """Queue `EVALSHA` calls, write them together on one connection, read replies in order.

    Calls are written at the end of the loop turn they were made in, or as soon as
    `eager` of them are waiting: Redis then starts on the first ones while the worker
    is still finishing the rest of the turn's jobs, instead of the two taking turns.
    (No-op jobs, concurrency 10, on 2 cores: eager 4 ran ~5,000-6,900 jobs/s, 10 -
    one write per turn - ~3,100, 2 ~3,800-5,400.)
    Writes are synchronous (order of writes = order of replies) and never wait for the
    socket: a worker has at most one call per job slot outstanding.
    """

    def __init__(self, client: aioredis.Redis, eager: int = 4) -> None:
        self.client = client
        self.eager = eager
        self._conn: Any = None
        self._ready = False  # connected AND handshake (AUTH, SELECT, ...) done
        self._queued: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._sent: deque[asyncio.Future[Any]] = deque()
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._progress = 0.0  # loop time of the last reply (or of a write to an idle pipeline)
        self._stuck = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self.writes = 0
        self.calls = 0

    async def run_script(self, script: AsyncScript, keys: list[Any], args: list[Any], retried: bool = False) -> Any:
        """`script(keys=keys, args=args)`, written together with other calls."""
        if self._closed:
            return await script(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((pack(("EVALSHA", script.sha, len(keys), *keys, *args)), future))
        if len(self._queued) >= self.eager and self._writable():
            self._write_queued()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._end_of_turn)
        try:
            return await future
        except NoScriptError:
            if retried:
                raise
            await self._load(script)
            return await self.run_script(script, keys, args, retried=True)
        except _RESEND:
            # No reply, so not known to have run: the client retries it (its retry policy).
            return await script(keys=keys, args=args)

    async def _load(self, script: AsyncScript) -> None:
        """SCRIPT LOAD once for all the calls that met NOSCRIPT together."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = asyncio.ensure_future(self.client.script_load(script.script))
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda _f: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    def _writable(self) -> bool:
        conn = self._conn
        if not self._ready or conn is None or not conn.is_connected:
            return False
        writer = getattr(conn, "_writer", None)
        return writer is not None and not writer.transport.is_closing()

    def _end_of_turn(self) -> None:
        self._flush_scheduled = False
        if not self._queued:
            return
        if self._writable():
            self._write_queued()
        elif self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect_then_write())

    async def _connect_then_write(self) -> None:
        try:
            if self._conn is None:
                pool = self.client.connection_pool
                self._conn = pool.connection_class(**pool.connection_kwargs)
            await self._conn.connect()
            if getattr(self._conn, "_writer", None) is None:  # a redis-py without it: no pipelining
                self._closed = True
                raise _Resend("redis-py connection has no stream writer")
            self._ready = True
        except Exception as exc:
            queued, self._queued = self._queued, []
            for _, fut in queued:
                _settle(fut, exc=exc if isinstance(exc, _RESEND) else RedisConnectionError(str(exc)))
            self._drop_connection()
            return
        if self._queued:
            self._write_queued()

    def _write_queued(self) -> None:
        """Write every queued call now."""
        batch, self._queued = self._queued, []
        live = [(cmd, fut) for cmd, fut in batch if not fut.done()]
        if not live:
            return
        conn = self._conn
        if not self._sent:
            self._progress = asyncio.get_running_loop().time()
        self._sent.extend(fut for _, fut in live)
        try:
            conn._writer.write(b"".join(cmd for cmd, _ in live))
        except Exception as exc:
            self._fail_all(exc)
            return
        self.writes += 1
        self.calls += len(live)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read(conn))

    async def _read(self, conn: Any) -> None:
        """Settle the sent calls in order. A watchdog, not a timeout per reply, bounds the wait."""
        loop = asyncio.get_running_loop()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._patience(conn), self._check_progress, conn)
        try:
            while self._sent:
                try:
                    reply = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:
                    _settle(self._sent.popleft(), exc=exc)
                except asyncio.CancelledError:
                    self._fail_all(
                        RedisTimeoutError(f"no reply from Redis within {self._patience(conn)} s")
                        if self._stuck else RedisConnectionError("auto-pipeline closed")
                    )
                    if self._stuck:
                        return
                    raise
                except Exception as exc:
                    self._fail_all(exc)
                    return
                else:
                    _settle(self._sent.popleft(), result=reply)
                self._progress = loop.time()
        finally:
            self._stuck = False

    @staticmethod
    def _patience(conn: Any) -> float:
        return float(conn.socket_timeout or 30.0)

    def _check_progress(self, conn: Any) -> None:
        """Cancel the reader if calls wait and no reply came for `socket_timeout` s."""
        self._watchdog = None
        if self._reader is None or self._reader.done() or not self._sent:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._progress
        if idle >= self._patience(conn):
            self._stuck = True
            self._reader.cancel()
        else:
            self._watchdog = loop.call_later(self._patience(conn) - idle, self._check_progress, conn)

    def _fail_all(self, exc: Exception) -> None:
        """Every call without a reply gets `exc`; the connection starts afresh next time."""
        waiting, self._sent = list(self._sent), deque()
        for fut in waiting:
            _settle(fut, exc=exc if isinstance(exc, _RESEND) else RedisConnectionError(str(exc)))
        self._drop_connection()

    def _drop_connection(self) -> None:
        self._ready = False
        if self._conn is not None:
            conn, self._conn = self._conn, None
            asyncio.ensure_future(conn.disconnect(nowait=True))

    async def close(self) -> None:
        """Stop pipelining: later calls go through the client; calls already made finish."""
        self._closed = True
        if self._queued:
            if self._writable():
                self._write_queued()
            else:
                queued, self._queued = self._queued, []
                for _, fut in queued:
                    _settle(fut, exc=_Resend("auto-pipeline closed"))
        if self._reader is not None and not self._reader.done():
            await asyncio.wait([self._reader], timeout=5)
            self._reader.cancel()
        self._ready = False
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.disconnect()


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
