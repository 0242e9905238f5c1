"""Durable writes: a write is reported done only once `BULLWAIT_WAIT_REPLICAS` replicas hold it.

Replication is asynchronous: a write the master acknowledged can vanish when a replica is
promoted (Sentinel failover, a managed service's failover). With `BULLWAIT_WAIT_REPLICAS`
= N > 0, producer adds, send-record claims and waitlist-store transitions send `WAIT N
timeout` right behind their write. WAIT counts the replicas that acknowledged the writes
*of the connection it is sent on*, so both go on one pool connection, written together
(one round trip, no MULTI: inside a transaction WAIT does not block and answers 0).

When WAIT answers fewer than N (a replica down or lagging, a failover under way) the
write is sent again, on whatever master the client reaches now: every write covered here
is safe to repeat (adds by job id, claims by owner, store transitions are compare-and-set).
A repeat that changes nothing (`already-expired`) propagates nothing, and WAIT on a
connection that propagated nothing answers at once; so a repeat first writes a short-lived
marker key in the write's own hash slot, which moves the connection's replication offset
past the original write. After `WAIT_ATTEMPTS` short answers the call raises
`WriteNotDurable`, naming the setting: success is never reported for a write that only one
node holds.

The write and WAIT share a connection of the client's pool, as a bulk add's MULTI and EXEC
do (`bullwait.engine.exchange`); a Sentinel pool's connections turn READONLY into a
connection error there too, so the client's retry moves them to the new master.

Redis Cluster: WAIT counts the replicas of the node it is sent to, so the write and WAIT
go on one connection of the master that owns the write's slot; MOVED, ASK, TRYAGAIN,
CLUSTERDOWN and lost connections are met as `bullwait.engine.exchange` says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from bullwait.engine.exchange import Command, Try, exchange, raise_refusal, send
from bullwait.engine.internals import script_command
from bullwait.errors import WriteNotDurable
from bullwait.logs import get_logger
from bullwait.settings import Settings

# Sends of one write (the first plus repeats) before `WriteNotDurable`.
WAIT_ATTEMPTS = 3
# How long a repeat's marker key lives: it only has to reach the replication stream.
MARKER_TTL_MS = 1000
MARKER_SUFFIX = ":durable"
# (first reply, reply of a repeat) -> the reply to report; see `run_script`.
Settle = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Durability:
    """`replicas` that must confirm a write (0: no WAIT at all) within `timeout_ms` per try."""

    replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Durability:
        return cls(settings.bullwait_wait_replicas, settings.bullwait_wait_timeout_ms)

    @property
    def enabled(self) -> bool:
        return self.replicas > 0

    def wait_command(self) -> Command:
        return ("WAIT", self.replicas, self.timeout_ms)

    def failure(self, what: str, acked: int) -> WriteNotDurable:
        return WriteNotDurable(
            f"{what}: only {acked} of {self.replicas} replica(s) confirmed it within {self.timeout_ms} ms, "
            f"{WAIT_ATTEMPTS} times (BULLWAIT_WAIT_REPLICAS={self.replicas}); the master holds it but a failover "
            "could lose it. Check the replicas (INFO replication), raise BULLWAIT_WAIT_TIMEOUT_MS, "
            "or lower BULLWAIT_WAIT_REPLICAS"
        )


def marker_key(key: str) -> str:
    """A key in `key`'s hash slot (same `{tag}`), under the same prefix (ACL key patterns)."""
    return key + MARKER_SUFFIX


async def run_script(
    client: Any,
    durability: Durability,
    script: Any,
    keys: Sequence[Any],
    args: Sequence[Any],
    what: str,
    settle: Settle | None = None,
) -> Any:
    """`script(keys, args)` (a redis-py Script) on `client`, confirmed by WAIT (see `run_command`)."""
    command = await script_command(script, keys, args)
    return await run_command(client, durability, command, script.script, what, settle)


async def run_command(
    client: Any, durability: Durability, command: Command, source: str, what: str, settle: Settle | None = None
) -> Any:
    """One EVALSHA of the Lua `source`, confirmed by WAIT; its reply (an error reply raised).

    A repeat answers about the state the first try left (`already-expired` where the first
    said `expired`): `settle(first, repeat)` picks the reply to report (default: the repeat's)."""
    first: Any = None
    acked = 0
    for attempt in range(WAIT_ATTEMPTS):
        marker = _first_key([command]) if attempt else None
        [reply], acked = await send_and_wait(client, durability, [command], marker)
        if is_noscript(reply):
            await client.script_load(source)  # first use, SCRIPT FLUSH, a new master
            [reply], acked = await send_and_wait(client, durability, [command], marker)
        if isinstance(reply, BaseException):
            raise reply
        if attempt == 0:
            first = reply
        elif settle is not None:
            reply = settle(first, reply)
        if acked >= durability.replicas:
            return reply
        log_short(what, acked, durability, attempt)
    raise durability.failure(what, acked)


async def send_and_wait(
    client: Any, durability: Durability, commands: Sequence[Command], marker: str | None = None
) -> tuple[list[Any], int]:
    """`commands` then WAIT on one pool connection (with a cluster, of the master that owns
    their slot): their replies (error replies as exception objects) and the number of
    replicas WAIT counted. With `marker` (a key of the write), a marker key beside it is
    written before WAIT (see the module docstring).

    A lost connection or a cluster's refusal is retried as `bullwait.engine.exchange.send`
    says (the commands must be safe to repeat); a send after one that may have run writes
    the marker."""
    key = _first_key(commands)

    async def attempt(conn: Any, this: Try) -> tuple[list[Any], int]:
        repeat_marker = marker or (key if this.may_have_run else None)
        return await _write_and_wait(conn, durability, commands, repeat_marker, this.asking)

    return await send(client, key, attempt)


async def _write_and_wait(
    conn: Any, durability: Durability, commands: Sequence[Command], marker: str | None, asking: bool
) -> tuple[list[Any], int]:
    extra: list[Command] = [("SET", marker_key(marker), "1", "PX", MARKER_TTL_MS)] if marker else []
    every = [*commands, *extra]
    if asking:  # ASKING admits the next command only
        every = [part for command in every for part in (("ASKING",), command)]
    replies, acked = await exchange(conn, conn.pack_commands(every), [len(every)], durability.wait_command())
    if asking:
        asked, replies = replies[0::2], replies[1::2]
        refused = next((r for r in asked if isinstance(r, BaseException)), None)
        if refused is not None:  # ASKING itself (an ACL without +asking)
            raise refused
    raise_refusal(replies)
    if extra and isinstance(replies[-1], BaseException):
        raise replies[-1]
    return replies[: len(commands)], acked


def _first_key(commands: Sequence[Command]) -> str | None:
    """The first key of the first EVALSHA (its numkeys > 0), for a repeat's marker."""
    for command in commands:
        if command and command[0] == "EVALSHA" and int(command[2]) > 0:
            return str(command[3])
    return None


def is_noscript(reply: Any) -> bool:
    """A NOSCRIPT reply: redis-py raises it as `NoScriptError` from its own calls, as a bare
    `ResponseError` from a transaction's replies."""
    return isinstance(reply, NoScriptError) or (isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"))


def log_short(what: str, acked: int, durability: Durability, attempt: int) -> None:
    get_logger(component="durable").warning(
        "write not confirmed by enough replicas; sending it again",
        what=what,
        acked=acked,
        replicas=durability.replicas,
        timeout_ms=durability.timeout_ms,
        attempt=attempt + 1,
        of=WAIT_ATTEMPTS,
    )
