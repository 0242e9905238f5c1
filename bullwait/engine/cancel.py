"""Cancelling a job only while it waits (the NestJS module's cancelExpiryTimer rule), atomically.

The job's hash is WATCHed on one connection, its state read, and bullmq's `removeJob` sent
in MULTI/EXEC on that connection: if a worker takes the job meanwhile (moveToActive writes
`processedOn`), EXEC discards the removal and the state is read again. It is done by hand on
a connection of the client's pool, not through a redis-py pipeline, because a cluster
pipeline refuses scripts; with a cluster the connection is one of the master that owns the
queue's slot. A lost connection is retried with the client's retry policy and a MOVED is
raised: cancelling again is safe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bullwait.engine.internals import pool_connection, remove_job_keys

# BullMQ's states of a job that has not started (`wait` as bullmq-py names `waiting`).
CANCELLABLE_STATES = frozenset({"waiting", "wait", "delayed", "prioritized", "paused"})
# Times the job may change under the WATCH before the state it is in then is reported.
WATCH_TRIES = 10

StateReader = Callable[[], Awaitable[str]]


async def cancel_waiting(client: Any, remove: Any, prefix: str, job_id: str, read_state: StateReader) -> str:
    """Remove job `job_id` of the queue whose keys start with `prefix` (`<prefix>:<queue>:`)
    if `read_state()` says it has not started. `remove` is bullmq's `removeJob` script
    registered on `client`. Returns `cancelled`, `missing`, or the state that stopped it."""
    keys = [prefix + name for name in remove_job_keys(job_id)]
    command = ("EVALSHA", remove.sha, len(keys), *keys, job_id, 1, prefix)
    await client.script_load(remove.script)  # on every master: EVALSHA inside MULTI cannot load it
    job_key = prefix + job_id
    async with pool_connection(client, job_key) as conn:

        async def attempt() -> str | None:
            try:
                return await _watch_and_remove(conn, job_key, command, read_state)
            except BaseException:
                await conn.disconnect()  # replies may be left unread
                raise

        outcome: str | None = await conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
    return outcome if outcome is not None else await read_state()


async def _watch_and_remove(conn: Any, job_key: str, command: tuple[Any, ...], read_state: StateReader) -> str | None:
    """The outcome, or None when the job kept changing under the WATCH."""
    for _ in range(WATCH_TRIES):
        await conn.send_command("WATCH", job_key)
        await conn.read_response()
        state = await read_state()
        if state not in CANCELLABLE_STATES:
            await conn.send_command("UNWATCH")
            await conn.read_response()
            return "missing" if state == "unknown" else state
        await conn.send_packed_command(conn.pack_commands([("MULTI",), command, ("EXEC",)]))
        await conn.read_response()  # OK
        await conn.read_response()  # QUEUED
        replies = await conn.read_response()
        if replies is None:  # the job changed after WATCH: read its state again
            continue
        if isinstance(replies[0], Exception):
            raise replies[0]
        if replies[0] == 1:
            return "cancelled"
    return None
