"""A TCP proxy on 127.0.0.1 that injects faults between Redis clients and a real redis-server.

    with FaultProxy(redis_port) as proxy:
        env["REDIS_URL"] = proxy.url()          # the worker reaches Redis through the proxy
        proxy.freeze(7.0)                       # nothing moves for 7 s, sockets stay open
        proxy.cut_mid_reply()                   # the next reply is half-sent, then the connection closes
        proxy.cut_every(50)                     # the same for every 50th reply, until cut_every(0)
        proxy.reset_all()                       # every open connection is reset (RST, SO_LINGER 0)
        proxy.latency(25)                       # every chunk is held 25 ms, each way
        proxy.counters                          # what happened so far

It runs its own asyncio loop in a daemon thread, so sync and async tests drive it alike;
the controls are thread-safe and return at once. A fault acts on the whole stream of bytes,
not on Redis commands: a "reply" is whatever chunk Redis wrote next on any connection (a
script's answer, a BZPOPMIN wake-up, a lock renewal), which is what a real network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 65536


@dataclass
class Counters:
    """What the proxy did; read them from any thread."""

    accepted: int = 0
    open: int = 0
    to_server_bytes: int = 0
    to_client_bytes: int = 0
    cuts: int = 0
    resets: int = 0
    freezes: int = 0


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    """One client connection and its upstream connection to Redis."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counters = Counters()
        self.port = 0
        self._latency_s = 0.0
        self._frozen_until = 0.0
        self._cuts_armed = 0
        self._cut_every = 0
        self._replies = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.Server | None = None

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---------------------------------------------------------------------------

    def freeze(self, seconds: float) -> None:
        """Forward nothing, either way, for `seconds` (new connections are accepted and then
        hang too); sockets stay open, so clients see a silent peer, not an error."""
        self._frozen_until = max(self._frozen_until, time.monotonic() + seconds)
        self.counters.freezes += 1

    def frozen(self) -> bool:
        return time.monotonic() < self._frozen_until

    def cut_mid_reply(self, count: int = 1) -> None:
        """The next `count` server->client chunks are each forwarded half-way, and then their
        connection is closed: the command ran in Redis, the client never reads its reply."""
        self._loop.call_soon_threadsafe(self._arm_cuts, count)

    def cuts_pending(self) -> int:
        return self._cuts_armed

    def cut_every(self, n: int) -> None:
        """Cut every `n`-th server->client chunk (0 stops): a steady rate of lost replies
        tied to traffic, not to a clock."""
        self._cut_every = max(0, n)

    def reset_all(self) -> int:
        """Reset every open connection, both sides (RST, not FIN). Returns how many."""
        return self._call(self._reset_all())

    def latency(self, ms: float) -> None:
        """Hold every chunk `ms` before forwarding it, in both directions (0 turns it off).
        Chunks keep their order and pipelining: latency, not a bandwidth limit."""
        self._latency_s = max(0.0, ms / 1000)

    # --- the proxy ------------------------------------------------------------------------

    def _call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def _arm_cuts(self, count: int) -> None:
        self._cuts_armed += count

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.counters.open += 1
        link.tasks = [
            asyncio.ensure_future(self._pump(link, reader, up_writer, to_client=False)),
            asyncio.ensure_future(self._pump(link, up_reader, writer, to_client=True)),
        ]

    async def _pump(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_client: bool) -> None:
        """Copy one direction. Each chunk is stamped when read and written once it is due,
        so latency delays without serialising; a freeze holds the writer."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.ensure_future(self._write(link, queue, dst, to_client))
        try:
            while not link.closed:
                data = await src.read(CHUNK)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self._latency_s, data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait((0.0, b""))  # end of stream: the writer closes once it has drained
            await asyncio.shield(writer)

    async def _write(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, to_client: bool
    ) -> None:
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await self._hold(due)
                if link.closed:
                    return
                if to_client and self._take_cut():
                    self.counters.cuts += 1
                    dst.write(data[: max(1, len(data) // 2)])
                    await dst.drain()
                    self._close(link)
                    return
                dst.write(data)
                await dst.drain()
                if to_client:
                    self.counters.to_client_bytes += len(data)
                else:
                    self.counters.to_server_bytes += len(data)
        except (OSError, ConnectionError):
            pass
        finally:
            self._close(link)

    def _take_cut(self) -> bool:
        self._replies += 1
        if self._cuts_armed > 0:
            self._cuts_armed -= 1
            return True
        return self._cut_every > 0 and self._replies % self._cut_every == 0

    async def _hold(self, due: float) -> None:
        while True:
            wait = max(due, self._frozen_until) - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 0.05))

    def _close(self, link: _Link, reset: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        self.counters.open -= 1
        for side in (link.client, link.server):
            if reset:
                _abort(side)
            else:
                side.close()

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._close(link, reset=True)
        self.counters.resets += len(links)
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on with a zero timeout drops the socket at once."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


__all__ = ["Counters", "FaultProxy"]
