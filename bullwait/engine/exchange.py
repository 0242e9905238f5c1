"""Commands that must share one connection, and the one policy for a cluster's refusals.

Bulk adds (`bullwait.engine.bulk`: MULTI, the adds, EXEC) and durable writes
(`bullwait.engine.durable`: the write, then WAIT) need their commands on one connection,
which redis-py's client API does not give. They take one from the client's pool
(`internals.pool_connection`) and write and read on it with `send_packed_command` /
`read_response`: `exchange` is that write and its replies, `send` chooses the connection
and sends again when a try did not take. Every write sent this way is safe to repeat.

One node: a lost connection is retried with the client's retry policy.

Redis Cluster: the connection is one of the master that owns the write's slot. A refusal
(the write did not run) or a lost connection is met the same way for every write:
- MOVED: the slot has another owner; the client's slot map takes the new owner and the
  write goes there at once;
- ASK: the slot is being migrated and the key is on the importing node already: the write
  goes to that node, ASKING before each of its commands, for this send only (the next one
  goes to the owner again);
- TRYAGAIN: the keys of a write are split between the two nodes of a migration: sent
  again, backing off, until the last key has moved;
- CLUSTERDOWN or a lost connection (a failover under way): the slot map is read again and
  the write sent again, backing off;
- a script refused at a key it did not declare (`Script attempted to access a non local
  key`): bullmq's scripts touch keys they do not declare (an add reads the job's hash,
  EXISTS, before it writes anything but its id counter), and while the slot migrates Redis
  refuses the script at such a key that is not on the owner. Met as TRYAGAIN: the write is
  sent again (it is safe to repeat; the same job ids add nothing twice);
for as long as the client retries a lost node (`FollowingCluster.retry_timeout`, which is
BULLWAIT_REDIS_RETRY_TIMEOUT for bullwait's clients); then the last error is raised.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bullwait.engine.autopipeline import pack
from bullwait.engine.connection import DEFAULT_CLUSTER_RETRY_SECONDS, RETRY_BACKOFF_BASE, RETRY_BACKOFF_CAP
from bullwait.engine.internals import is_cluster, node_connection, pool_connection, refresh_slots

Command = tuple[Any, ...]
T = TypeVar("T")


@dataclass(frozen=True)
class Try:
    """What one try of a write must know of those before it."""

    may_have_run: bool = False  # an earlier try may have run (its connection was lost)
    asking: bool = False  # on the node an ASK named: ASKING before each command (or MULTI)


# One try on a connection -> its result. It raises a refusal it read (`NOT_RUN`) for `send`.
Attempt = Callable[[Any, Try], Awaitable[T]]

# A cluster's replies for a command that did not run.
NOT_RUN = (MovedError, AskError, TryAgainError, ClusterDownError)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
# Redirects (MOVED, ASK) followed at once, in a row; past that they back off like the rest.
CLUSTER_SENDS = 5
# Read timeout of WAIT's reply beyond WAIT's own timeout (a slow network, a busy Redis).
READ_MARGIN_S = 5.0


async def exchange(
    conn: Any, packed: Sequence[bytes], groups: Sequence[int], wait: Command | None = None
) -> tuple[list[Any], int]:
    """Write `packed` (whole commands in RESP) and, with `wait`, WAIT behind them, in one go;
    then read their replies, `groups` of them (each group within one read timeout instead of
    a timeout context per reply; error replies as exception objects, not raised) and the
    number of replicas WAIT counted (0 without `wait`)."""
    try:
        tail = [pack(wait)] if wait else []
        await conn.send_packed_command([*packed, *tail], check_health=False)
        out: list[Any] = []
        for count in groups:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in range(count):
                    try:
                        out.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:  # keep reading: the other replies are still to come
                        out.append(exc)
        if wait is None:
            return out, 0
        return out, int(await conn.read_response(timeout=wait[2] / 1000 + READ_MARGIN_S))
    except BaseException:
        await conn.disconnect()  # replies may be left unread: never reuse this connection
        raise


# Redis's refusal of a script that reached a key of a slot this node does not serve (now).
MID_MIGRATION = "Script attempted to access a non local key"


def raise_refusal(replies: Sequence[Any]) -> None:
    """Raise the first reply that says its command did not run (see the module docstring); a
    script refused at a key of a migrating slot as TRYAGAIN."""
    for reply in replies:
        if isinstance(reply, NOT_RUN):
            raise reply
        if isinstance(reply, ResponseError) and str(reply).startswith(MID_MIGRATION):
            raise TryAgainError(str(reply))


async def send(client: Any, key: str | None, attempt: Attempt[T]) -> T:
    """`attempt` on a connection of the client's pool (with a cluster, of the master that owns
    `key`'s slot), tried again as the module docstring says."""
    if is_cluster(client):
        return await _send_to_slot(client, key, attempt)
    sends = 0
    async with pool_connection(client) as conn:

        async def once() -> T:
            nonlocal sends
            sends += 1
            return await attempt(conn, Try(may_have_run=sends > 1))

        result: T = await conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
        return result


async def _send_to_slot(client: Any, key: str | None, attempt: Attempt[T]) -> T:
    if key is None:
        raise ValueError("a write on a cluster needs a key to find its slot")
    loop = asyncio.get_running_loop()
    retry_seconds = float(getattr(client, "retry_timeout", 0.0) or DEFAULT_CLUSTER_RETRY_SECONDS)
    deadline: float | None = None  # counted from the first refusal, as `FollowingCluster` does
    pause, in_a_row = RETRY_BACKOFF_BASE, 0
    asking: tuple[str, int] | None = None
    may_have_run = False  # a refusal means it did not run; after a lost connection it may have
    while True:
        try:
            if asking is not None:
                target, asking = asking, None
                return await _after_asking(client, target, attempt)
            async with pool_connection(client, key) as conn:
                return await attempt(conn, Try(may_have_run=may_have_run))
        except (*NOT_RUN, *LOST) as exc:
            at_once = isinstance(exc, AskError)  # MovedError is an AskError too
            if isinstance(exc, AskError) and not isinstance(exc, MovedError):
                asking = (exc.host, int(exc.port))
            elif not isinstance(exc, TryAgainError):
                may_have_run = may_have_run or isinstance(exc, LOST)
                await refresh_slots(client, exc)
            in_a_row = in_a_row + 1 if at_once else 0
            delay = 0.0 if at_once and in_a_row <= CLUSTER_SENDS else pause
            deadline = loop.time() + retry_seconds if deadline is None else deadline
            if loop.time() + delay > deadline:
                raise
            if delay:
                await asyncio.sleep(delay)
                pause = min(pause * 2, RETRY_BACKOFF_CAP)


async def _after_asking(client: Any, address: tuple[str, int], attempt: Attempt[T]) -> T:
    """The write on one connection of the importing node an ASK named, ASKING before each of
    its commands (ASKING admits the next command, or the next MULTI ... EXEC, only); as a
    first try: it did not run where it was refused."""
    async with node_connection(client, *address) as conn:
        return await attempt(conn, Try(asking=True))
