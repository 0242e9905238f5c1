"""Adding many jobs at once: bullmq's own add scripts in one MULTI/EXEC, written in one go.

bullmq-py's `Queue.addBulk` builds a `Job` per job and goes through redis-py's
transaction pipeline, which packs every argument of every command in Python and reads
every reply through its own timeout wrapper: most of a producer's CPU per job.
`add_jobs` sends the same calls (the same scripts by SHA, the same keys, the arguments
`Scripts.addJobArgs` would build, the script chosen as `Scripts.addJob` chooses it)
packed with `autopipeline.pack`, as one write on one pool connection. A job is a small
`NewJob` (its data already JSON) instead of a bullmq `Job`, and its options are
normalised the way `Job.__init__` normalises them (`stored_opts`).

The chunk goes as MULTI/EXEC blocks of `TRANSACTION_JOBS` jobs, all in that one write:
Redis serves no other client while it runs a block, and a whole chunk in one block held it
for as long as all its add scripts took (docs/performance.md, "Mass expiry"; Node bullmq 6
sends `addBulk` as a plain pipeline, no block at all). A block is all or nothing; a chunk
is not (neither is Node's). Connection errors are retried with the client's retry
policy (adding a job again under the same id adds nothing twice, and the producer gives
every job an id). Scripts missing on the server (first use, SCRIPT FLUSH, failover) are
loaded and the calls they refused sent again.

On Redis Cluster the blocks go to the master that owns the queue's slot (every key of a
queue carries its hash tag). A block refused for a redirect (MOVED, ASK, TRYAGAIN,
CLUSTERDOWN: its EXEC aborts, nothing of it ran; blocks before it may have) or a lost
connection is met as every write on bullwait's own connections is
(`bullwait.engine.exchange`): the chunk is sent again. While the queue's slot is being
migrated its keys are split between two nodes, so a block followed to the importing node
(ASKING before each MULTI) is mostly refused there too (TRYAGAIN) until the last key has
moved: the chunk is sent again, backing off, for as long as the client retries.

Options that make a job part of a flow, deduplicated or repeated are not packed here
(`NewJob` refuses them); add such jobs with bullmq's `Queue.add`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from bullmq import Queue
from redis.exceptions import ResponseError

from bullwait.engine.autopipeline import pack, pack_args
from bullwait.engine.durable import WAIT_ATTEMPTS, Durability, is_noscript, log_short
from bullwait.engine.exchange import Command, Try, exchange, raise_refusal, send
from bullwait.engine.internals import ADD_JOB_KEYS, encode_job_opts, main_client, normalize_backoff, scripts_of
from bullwait.errors import BadArgument

_ASKING = pack(("ASKING",))
_MULTI = pack(("MULTI",))
_EXEC = pack(("EXEC",))

# Jobs per MULTI/EXEC block. Redis serves no other client while it runs a block's add scripts,
# so a chunk of 1,000 goes as several short blocks in the same write (bench/mass_expiry.py
# measures the longest block, docs/performance.md "Mass expiry").
TRANSACTION_JOBS = 100

# Options whose arguments (parent key, deduplication key, repeat key) `_call` does not build.
UNSUPPORTED_OPTS = frozenset(
    {
        "parent",
        "deduplication",
        "debounce",
        "repeat",
        "repeatJobKey",
        "failParentOnFailure",
        "removeDependencyOnFailure",
        "ignoreDependencyOnFailure",
        "continueParentOnFailure",
    }
)


def stored_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    """`opts` as bullmq's `Job` stores them (`attempts` defaults to 0, a number `backoff`
    becomes `{"type": "fixed", "delay": n}`), less two things no reader needs.

    `jobId`: BullMQ names the job's hash after its id and no worker (Node or Python), Lua
    script or Bull Board reads `opts.jobId` back; the copy would cost 11 bytes plus the id
    (54 for `expiry_<uuid>`) in every job hash. A zero `delay`: bullmq-py fills it in, Node
    does not write it, and BullMQ reads it as 0 when absent (the hash's own `delay` field
    is written either way). Everything else (attempts, backoff, retention, a real delay,
    priority) is kept as given."""
    final: dict[str, Any] = {"attempts": 0, "delay": 0}
    final.update(opts)
    final["backoff"] = normalize_backoff(opts.get("backoff"))
    final.pop("jobId", None)
    if not final["delay"]:
        del final["delay"]
    return final


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for `add_jobs`: `data` is its payload as JSON text, `opts` as `stored_opts` returns them."""

    name: str
    data: str
    opts: dict[str, Any]
    id: str
    timestamp: int

    def __post_init__(self) -> None:
        unsupported = UNSUPPORTED_OPTS.intersection(self.opts)
        if unsupported:
            raise BadArgument(
                f"job {self.id!r}: option(s) {', '.join(sorted(unsupported))} are not supported in a bulk add; "
                "add such jobs one by one with bullmq's Queue.add"
            )


def now_ms() -> int:
    """A job's `timestamp`, as bullmq computes it."""
    return round(time.time() * 1000)


def _call(queue: Queue, job: NewJob, heads: dict[str, tuple[int, bytes]]) -> tuple[Any, bytes]:
    """(script, packed EVALSHA) of bullmq's `Scripts.addJob` for `job`.

    `heads` caches each script's packed `EVALSHA <sha> <numkeys> <keys...>` (the same for
    every job of a queue), so only the arguments are packed per job."""
    opts = job.opts
    delay, priority = opts.get("delay"), opts.get("priority")
    if delay:
        name, last = "addDelayedJob", delay
    elif priority:
        name, last = "addPrioritizedJob", priority
    else:
        name, last = "addStandardJob", job.timestamp
    scripts = scripts_of(queue)
    script = scripts.script(name)
    if name not in heads:
        keys = scripts.keys(ADD_JOB_KEYS[name])
        heads[name] = (3 + len(keys), pack_args(("EVALSHA", script.sha, len(keys), *keys)))
    count, head = heads[name]
    # Scripts.addJobArgs: [prefix, id, name, timestamp, parentKey, parent dependencies
    # key, parent, repeat job key, deduplication key] msgpacked, the data, the options
    # with their short names msgpacked; then the delay, priority or timestamp.
    packed = msgpack.packb([scripts.prefix, job.id, job.name, job.timestamp, None, None, None, None, None])
    encoded = msgpack.packb(encode_job_opts(opts))
    return script, b"*%d\r\n" % (count + 4) + head + pack_args((packed, job.data, encoded, last))


async def add_jobs(queue: Queue, jobs: Sequence[NewJob], durability: Durability | None = None) -> list[str]:
    """Add `jobs` to `queue` in one write of MULTI/EXEC blocks; returns their ids.

    With `durability` enabled, WAIT follows EXEC on the same connection and the chunk is
    reported added only once enough replicas confirm it (`bullwait.engine.durable`). A short WAIT
    sends the whole chunk again: the same ids add nothing twice, and each repeated add
    writes bullmq's `duplicated` event, so the repeat's WAIT covers the first write too."""
    heads: dict[str, tuple[int, bytes]] = {}
    calls = [_call(queue, job, heads) for job in jobs]
    client = main_client(queue)
    slot_key = scripts_of(queue).key("wait")  # with a cluster: the slot whose master takes the chunk
    durability = durability or Durability()
    wait = durability.wait_command() if durability.enabled else None
    for attempt in range(WAIT_ATTEMPTS if wait else 1):
        replies, acked = await _transaction(client, [packed for _, packed in calls], wait, slot_key)
        missing = [i for i, reply in enumerate(replies) if is_noscript(reply)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                await client.script_load(script.script)
            # Perhaps on another pool connection: its WAIT covers only these writes.
            again, acked_again = await _transaction(client, [calls[i][1] for i in missing], wait, slot_key)
            acked = min(acked, acked_again)
            for i, reply in zip(missing, again):
                replies[i] = reply
        if wait is None or acked >= durability.replicas or _failed(replies):
            break
        log_short(f"{len(jobs)} jobs of {queue.name}", acked, durability, attempt)
    else:
        raise durability.failure(f"{len(jobs)} jobs of {queue.name} not added durably", acked)
    ids = []
    for job, reply in zip(jobs, replies):
        if isinstance(reply, ResponseError):
            raise reply
        if isinstance(reply, int) and reply < 0:
            raise scripts_of(queue).error(reply, "addJob", job.id)
        ids.append(reply.decode() if isinstance(reply, bytes) else str(reply))
    return ids


def _failed(replies: list[Any]) -> bool:
    """An error reply: raised below, no point in waiting for replicas first."""
    return any(isinstance(r, ResponseError) or (isinstance(r, int) and r < 0) for r in replies)


async def _transaction(
    client: Any, commands: list[bytes], wait: Command | None = None, key: str | None = None
) -> tuple[list[Any], int]:
    """`commands` in MULTI/EXEC blocks (and `wait`: WAIT after the last EXEC, on the same
    connection) in one write; the EXEC replies joined (errors as ResponseError items) and the
    replicas WAIT counted (0 without `wait`). With a cluster client, on the master that owns
    `key`'s slot."""
    blocks = transaction_blocks(commands)

    async def attempt(conn: Any, this: Try) -> tuple[list[Any], int]:
        replies, acked = await _send_blocks(conn, blocks, wait, this.asking)
        raise_refusal(replies)
        return replies, acked

    return await send(client, key, attempt)


def transaction_blocks(commands: Sequence[bytes], size: int | None = None) -> list[Sequence[bytes]]:
    """`commands` cut into MULTI/EXEC blocks of at most `size` (default `TRANSACTION_JOBS`); one block if none."""
    size = max(1, size or TRANSACTION_JOBS)
    return [commands[i : i + size] for i in range(0, len(commands), size)] or [commands]


async def _send_blocks(
    conn: Any, blocks: list[Sequence[bytes]], wait: Command | None, asking: bool
) -> tuple[list[Any], int]:
    head = [_ASKING] if asking else []  # ASKING admits one MULTI ... EXEC
    packed = [part for block in blocks for part in (*head, _MULTI, *block, _EXEC)]
    sizes = [len(head) + len(block) + 2 for block in blocks]
    replies, acked = await exchange(conn, packed, sizes, wait)
    executed: list[Any] = []
    start = 0
    for size in sizes:
        executed.extend(_block_result(replies[start : start + size]))
        start += size
    return executed, acked


def _block_result(replies: list[Any]) -> list[Any]:
    """EXEC's replies of one block (errors as ResponseError items). A block Redis did not run
    raises why: the first command it refused (EXECABORT follows one), else EXEC's own error."""
    *before, executed = replies
    if isinstance(executed, ResponseError):
        raise next((r for r in before if isinstance(r, ResponseError)), executed)
    return list(executed)
