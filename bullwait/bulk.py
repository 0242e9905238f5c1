"""Adding many jobs at once: bullmq's own add scripts in one MULTI/EXEC, written in one go.

bullmq-py's `Queue.addBulk` goes through redis-py's transaction pipeline, which packs
every argument of every command in Python and reads every reply through its own
timeout wrapper: more than half of a producer's CPU per job. `add_jobs` sends the same
calls (the same scripts by SHA, keys and arguments, built by bullmq's
`Scripts.addJobArgs`, script chosen as `Scripts.addJob` does) packed with
`autopipeline.pack`, as one write on one pool connection.

Like `addBulk` the chunk is one transaction. Connection errors are retried with the
client's retry policy (adding a job again under the same id adds nothing twice, and the
producer gives every job an id). Scripts missing on the server (first use, SCRIPT FLUSH,
failover) are loaded and the calls they refused sent again.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Sequence

from bullmq import Queue
from bullmq.job import Job
from redis.exceptions import NoScriptError, ResponseError

from bullwait.autopipeline import pack, pack_args

_MULTI = pack(("MULTI",))
_EXEC = pack(("EXEC",))


_KEYS = {
    "addDelayedJob": ["marker", "meta", "id", "delayed", "completed", "events"],
    "addPrioritizedJob": ["marker", "meta", "id", "prioritized", "delayed", "completed", "active", "events", "pc"],
    "addStandardJob": ["wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker"],
}


def _call(queue: Queue, job: Job, heads: dict[str, tuple[int, bytes]]) -> tuple[Any, bytes]:
    """(script, packed EVALSHA) of bullmq's `Scripts.addJob` for `job`.

    `heads` caches each script's packed `EVALSHA <sha> <numkeys> <keys...>` (the same for
    every job of a queue), so only the arguments are packed per job."""
    scripts = queue.backend.scripts
    delay, priority = job.opts.get("delay"), job.opts.get("priority")
    if delay:
        name, last = "addDelayedJob", delay
    elif priority:
        name, last = "addPrioritizedJob", priority
    else:
        name, last = "addStandardJob", job.timestamp
    script = scripts.commands[name]
    if name not in heads:
        keys = scripts.getKeys(_KEYS[name])
        heads[name] = (3 + len(keys), pack_args(("EVALSHA", script.sha, len(keys), *keys)))
    count, head = heads[name]
    args = scripts.addJobArgs(job)
    args.append(last)
    return script, b"*%d\r\n" % (count + len(args)) + head + pack_args(args)


async def add_jobs(queue: Queue, jobs: Sequence[Job]) -> list[str]:
    """Add `jobs` (bullmq Job objects of `queue`) in one transaction; sets and returns their ids."""
    heads: dict[str, tuple[int, bytes]] = {}
    calls = [_call(queue, job, heads) for job in jobs]
    client = queue.backend.connection.conn
    replies = await _transaction(client, [packed for _, packed in calls])
    missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            await client.script_load(script.script)
        again = await _transaction(client, [calls[i][1] for i in missing])
        for i, reply in zip(missing, again):
            replies[i] = reply
    ids = []
    for job, reply in zip(jobs, replies):
        if isinstance(reply, ResponseError):
            raise reply
        if isinstance(reply, int) and reply < 0:
            raise queue.backend.scripts.finishedErrors({"code": reply, "parentKey": job.parentKey, "command": "addJob"})
        job.id = reply
        ids.append(reply)
    return ids


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"))


async def _transaction(client: Any, commands: list[bytes]) -> list[Any]:
    """MULTI, `commands`, EXEC in one write; the EXEC reply (errors as ResponseError items)."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(lambda: _send_and_read(conn, commands), lambda _error: conn.disconnect())
    finally:
        await pool.release(conn)


async def _send_and_read(conn: Any, commands: list[bytes]) -> list[Any]:
    try:
        await conn.send_packed_command([_MULTI, *commands, _EXEC], check_health=False)
        await conn.read_response()  # +OK
        refused: ResponseError | None = None
        # One deadline for all the +QUEUED replies instead of a timeout context per reply.
        async with asyncio.timeout(conn.socket_timeout):
            for _ in commands:
                try:
                    await conn.read_response(timeout=math.inf)
                except ResponseError as exc:  # a command Redis would not queue: EXEC aborts
                    refused = refused or exc
        try:
            return list(await conn.read_response())
        except ResponseError as exc:
            raise (refused or exc) from None
    except BaseException:
        await conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
