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

Redis Cluster. With a `RedisCluster` client the connection goes to the master that owns
`key`'s slot (a worker's calls all touch one queue, one slot). A redirect reply (MOVED,
ASK, TRYAGAIN, CLUSTERDOWN) means the call did not run: it is sent again through the
client, which follows the redirect and updates its slot map. After MOVED or CLUSTERDOWN
(a failover, a migrated slot) the connection is dropped, and the next one is made to the
slot's owner as the map says then; the calls written after the refused one were refused
too (one slot), and go through the client the same way.

Bad bytes. A reply holding bytes that are not UTF-8 (a job hash written by hand) made
redis-py raise while reading it, which failed the connection and every call written
with it: jobs of other slots were re-sent after they had run. The connection reads such
bytes as surrogate escapes instead (`errors="surrogateescape"`), so the reply reaches
its own caller, which can see them (`bullwait.engine.jobcheck.not_utf8`) and write them back.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bullwait.engine.internals import new_connection, pool_kwargs, refresh_slots, stream_writer


class _Resend(Exception):
    """The call was not sent; send it through the ordinary client instead."""


_RESEND = (RedisConnectionError, RedisTimeoutError, OSError, _Resend)
# Cluster replies for a call that did not run; the first two say the slot has another owner now.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
_MOVED = (MovedError, ClusterDownError)


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in RESP, as redis-py's `pack_command` writes it (str, bytes, int, float)."""
    return b"*%d\r\n" % len(command) + pack_args(command)


def pack_args(args: tuple[Any, ...] | list[Any]) -> bytes:
    """The bulk strings of `args`, without the array header (`pack` adds it)."""
    out: list[bytes] = []
    append = out.append
    for arg in args:
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


class _Link:
    """One connection and the calls written on it, in order, with the task reading their replies.

    Everything about a connection lives and dies together: when it fails, only its own
    calls fail, and a reader never settles another connection's calls.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent: deque[asyncio.Future[Any]] = deque()
        self.reader: asyncio.Task[None] | None = None
        self.progress = 0.0  # loop time of the last reply (or of a write while idle)
        self.stuck = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.dead = False

    def writable(self) -> bool:
        writer = stream_writer(self.conn)
        return not self.dead and writer is not None and not writer.transport.is_closing()

    def patience(self) -> float:
        return float(self.conn.socket_timeout or 30.0)


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

    def __init__(self, client: aioredis.Redis, eager: int = 4, key: str | None = None) -> None:
        self.client = client
        self.eager = eager
        self.key = key  # with a cluster client: a key of the slot the calls touch
        self.redirects = 0  # calls a node refused with a redirect, sent again through the client
        self.moves = 0  # links dropped because their slot moved (failover, migration)
        self._link: _Link | None = None  # only set once connected AND handshake done
        self._queued: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self.writes = 0
        self.calls = 0

    @property
    def _conn(self) -> Any:
        return self._link.conn if self._link is not None else None

    async def run_script(
        self, script: AsyncScript, keys: list[Any], args: list[Any], retried: bool = False, packed: bytes | None = None
    ) -> Any:
        """`script(keys=keys, args=args)`, written together with other calls.

        `packed`, when given, is that call already packed (`EVALSHA sha numkeys keys args`)."""
        if self._closed:
            return await script(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if packed is None:
            packed = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        self._queued.append((packed, future))
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
            return await self.run_script(script, keys, args, retried=True, packed=packed)
        except _RESEND:
            # No reply, so not known to have run: the client retries it (its retry policy).
            return await script(keys=keys, args=args)
        except _REDIRECTS:
            # Refused by a node that does not serve the slot now: not run; the client follows.
            self.redirects += 1
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
        if self._link is not None and not self._link.writable():
            self._fail_link(self._link, RedisConnectionError("auto-pipeline connection closed"))
        return self._link is not None

    def _end_of_turn(self) -> None:
        self._flush_scheduled = False
        if not self._queued:
            return
        if self._writable():
            self._write_queued()
        elif self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect_then_write())

    async def _connect_then_write(self) -> None:
        decoding = bool((pool_kwargs(self.client) or {}).get("decode_responses"))
        escape = {"encoding_errors": "surrogateescape"} if decoding else {}  # see "Bad bytes" above
        conn: Any = None
        try:
            conn = await new_connection(self.client, self.key, **escape)
            await conn.connect()
            if stream_writer(conn) is None:  # a redis-py without it: no pipelining
                self._closed = True
                raise _Resend("redis-py connection has no stream writer")
        except Exception as exc:
            queued, self._queued = self._queued, []
            for _, fut in queued:
                _settle(fut, exc=exc if isinstance(exc, _RESEND) else RedisConnectionError(str(exc)))
            if conn is not None:
                _in_background(conn.disconnect(nowait=True))
            return
        if self._closed:
            await conn.disconnect()
            queued, self._queued = self._queued, []
            for _, fut in queued:
                _settle(fut, exc=_Resend("auto-pipeline closed"))
            return
        self._link = _Link(conn)
        if self._queued:
            self._write_queued()

    def _write_queued(self) -> None:
        """Write every queued call now on the current link (which `_writable` checked)."""
        link = self._link
        assert link is not None
        batch, self._queued = self._queued, []
        live = [(cmd, fut) for cmd, fut in batch if not fut.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        if not link.sent:
            link.progress = loop.time()
        link.sent.extend(fut for _, fut in live)
        try:
            writer = stream_writer(link.conn)
            assert writer is not None  # checked by _writable
            writer.write(b"".join(cmd for cmd, _ in live))
        except Exception as exc:
            self._fail_link(link, exc)
            return
        self.writes += 1
        self.calls += len(live)
        if link.reader is None or link.reader.done():
            link.reader = asyncio.ensure_future(self._read(link))
        if link.watchdog is None:
            link.watchdog = loop.call_later(link.patience(), self._check_progress, link)

    async def _read(self, link: _Link) -> None:
        """Settle `link`'s calls in order. A watchdog, not a timeout per reply, bounds the wait."""
        loop = asyncio.get_running_loop()
        while link.sent and not link.dead:
            try:
                reply = await link.conn.read_response(timeout=math.inf)
            except _MOVED as exc:
                # The slot moved: this node refuses every call written to it (one slot); all
                # go through the client, and the next link goes to the new owner.
                self.moves += 1
                self._fail_link(link, _Resend(str(exc)))
                _in_background(refresh_slots(self.client, exc))
                return
            except ResponseError as exc:
                if link.sent:
                    _settle(link.sent.popleft(), exc=exc)
            except asyncio.CancelledError:
                if link.stuck or link.dead:  # our own watchdog or _fail_link: the link is done for
                    self._fail_link(link, RedisTimeoutError(f"no reply from Redis within {link.patience()} s"))
                    return
                self._fail_link(link, RedisConnectionError("auto-pipeline closed"))
                raise
            except Exception as exc:
                self._fail_link(link, exc)
                return
            else:
                if link.sent:
                    _settle(link.sent.popleft(), result=reply)
            link.progress = loop.time()

    def _check_progress(self, link: _Link) -> None:
        """Give up on `link` if calls wait on it and no reply came for `socket_timeout` s."""
        link.watchdog = None
        if link.dead or not link.sent:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - link.progress
        if idle >= link.patience():
            link.stuck = True
            if link.reader is not None and not link.reader.done():
                link.reader.cancel()
            else:
                self._fail_link(link, RedisTimeoutError(f"no reply from Redis within {link.patience()} s"))
        else:
            link.watchdog = loop.call_later(link.patience() - idle, self._check_progress, link)

    def _fail_link(self, link: _Link, exc: Exception) -> None:
        """Every call on `link` without a reply gets `exc`; the next call opens a new link."""
        if self._link is link:
            self._link = None
        waiting = list(link.sent)
        link.sent.clear()
        for fut in waiting:
            _settle(fut, exc=exc if isinstance(exc, _RESEND) else RedisConnectionError(str(exc)))
        if link.dead:
            return
        link.dead = True
        if link.watchdog is not None:
            link.watchdog.cancel()
        if link.reader is not None and not link.reader.done() and link.reader is not asyncio.current_task():
            link.reader.cancel()
        _in_background(link.conn.disconnect(nowait=True))

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
        link = self._link
        if link is None:
            return
        if link.reader is not None and not link.reader.done():
            await asyncio.wait([link.reader], timeout=5)
        self._fail_link(link, _Resend("auto-pipeline closed"))
        await link.conn.disconnect()


# Disconnects nobody waits for, referenced until done (the event loop keeps only weak references).
_background: set[asyncio.Future[Any]] = set()


def _in_background(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
