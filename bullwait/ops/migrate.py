"""Move every job from the NestJS module's legacy queue names to the current ones, losslessly.

A team upgrading its NestJS app from bullmq 4.x (`waitlist:expiry`, ...) to bullmq 6
(`waitlist-expiry`, ...) has jobs in flight on the old names: 15-minute timers, waiting
and prioritized notifications, failed jobs kept for inspection. `migrate_legacy` moves

    waiting, paused (4.x `paused` list), prioritized, delayed, failed

jobs one at a time with a Lua script that, atomically, copies the job hash (data, opts,
timestamp, attempts, failedReason, stacktrace, ...) and its logs to the current queue,
puts the id in the matching structure there (a delayed job keeps its exact due time,
a prioritized one its priority), wakes the workers, and deletes the legacy copy. So a
crash at any point leaves each job in exactly one of the two queues, and re-running
moves what is left. Custom ids (`expiry_<waitlistId>`) are kept, so cancelling still
works; a numeric (auto) id that is already taken on the current queue gets a fresh one.
A custom id taken on both sides is a conflict: the legacy job is left in place and
reported. Active jobs are never moved: stop the legacy workers first.

Both queues' keys share the BullMQ prefix; on Redis Cluster that prefix carries a hash
tag (`{bull}`), so the script's keys are in one slot, as for BullMQ's own scripts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bullwait.engine.connection import load_scripts, queue_script, redis_client
from bullwait.errors import BullwaitError
from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.catalog import LEGACY_QUEUE_NAMES, QUEUE_NAMES, QueueKey

MOVABLE_STATES = ("delayed", "prioritized", "wait", "paused", "failed")
MAX_EVENTS = 10_000
PAGE = 1000  # ids per read of a legacy list or set
# Script calls per pipeline: Redis runs a client's pipelined calls back to back, so another
# client waits for the whole pipeline, not just for one call.
MOVES_PER_ROUND_TRIP = 50
_MARKER = re.compile(r"^0:\d+$|^0$")  # bullmq 4.x wake-up markers in the wait list


class ActiveLegacyJobs(BullwaitError):
    """Legacy workers are still processing jobs; moving them now could run them twice."""


class TaggedNamesNotMigrated(BullwaitError):
    """The move goes to the current names; tagged names would leave the jobs where no worker reads."""


MOVE_SCRIPT = r"""
--[[ Move one job from a legacy queue to the current one, atomically.
  KEYS[1] legacy queue key prefix  '<prefix>:<legacy>:'
  KEYS[2] current queue key prefix '<prefix>:<current>:'
  ARGV[1] job id
  ARGV[2] legacy state: wait | paused | prioritized | delayed | failed
  ARGV[3] max events
  Returns {status, target id}; status is moved | gone | conflict.
]]
local rcall = redis.call
local src, dst = KEYS[1], KEYS[2]
local id, state = ARGV[1], ARGV[2]
local srcJob = src .. id
local container = src .. state
local isList = state == "wait" or state == "paused"

local score
if isList then
  if not rcall("LPOS", container, id) then return {"gone", ""} end
else
  score = rcall("ZSCORE", container, id)
  if not score then return {"gone", ""} end
end
if rcall("EXISTS", srcJob) == 0 then return {"gone", ""} end

-- Numeric ids were generated from the legacy `id` counter. Keep the current counter at or
-- above it, so neither NestJS's next job nor a renumbered one can take a legacy id.
local numeric = string.match(id, "^%d+$") ~= nil
if numeric then
  local legacyCounter = tonumber(rcall("GET", src .. "id") or "0") or 0
  local counter = tonumber(rcall("GET", dst .. "id") or "0") or 0
  local floor = math.max(legacyCounter, tonumber(id))
  if counter < floor then rcall("SET", dst .. "id", floor) end
end
local newId = id
if rcall("EXISTS", dst .. newId) == 1 then
  if not numeric then return {"conflict", ""} end
  repeat newId = tostring(rcall("INCR", dst .. "id")) until rcall("EXISTS", dst .. newId) == 0
end

-- the job hash, with bullmq 4's attempt counter under bullmq 6's field name
local fields = rcall("HGETALL", srcJob)
local dstJob = dst .. newId
rcall("HSET", dstJob, unpack(fields))
local legacyAttempts = rcall("HGET", dstJob, "attemptsMade")
if legacyAttempts then
  if not rcall("HGET", dstJob, "atm") then rcall("HSET", dstJob, "atm", legacyAttempts) end
  rcall("HDEL", dstJob, "attemptsMade")
end
if rcall("EXISTS", srcJob .. ":logs") == 1 then
  rcall("DEL", dstJob .. ":logs")
  rcall("RENAME", srcJob .. ":logs", dstJob .. ":logs")
end

local meta = rcall("HMGET", dst .. "meta", "paused", "concurrency")
local pausedOrMaxed = meta[1] ~= false
if not pausedOrMaxed and meta[2] then
  pausedOrMaxed = rcall("LLEN", dst .. "active") >= tonumber(meta[2])
end

local event
if state == "delayed" then
  -- same score encoding in 4.x and 6.x: due time * 0x1000 + a counter; the due time is kept
  rcall("ZADD", dst .. "delayed", score, newId)
  local first = rcall("ZRANGE", dst .. "delayed", 0, 0, "WITHSCORES")
  if first[2] then rcall("ZADD", dst .. "marker", math.floor(tonumber(first[2]) / 0x1000), "1") end
  event = "delayed"
elseif state == "failed" then
  rcall("ZADD", dst .. "failed", score, newId)
  event = "failed"
else
  local priority = tonumber(rcall("HGET", dstJob, "priority") or "0") or 0
  if priority > 0 then
    local counter = rcall("INCR", dst .. "pc")
    rcall("ZADD", dst .. "prioritized", priority * 0x100000000 + counter % 0x100000000, newId)
  else
    rcall("RPUSH", dst .. "wait", newId) -- ahead of newer jobs already there: they are older
  end
  if not pausedOrMaxed then rcall("ZADD", dst .. "marker", 0, "0") end
  event = "waiting"
end
rcall("XADD", dst .. "events", "MAXLEN", "~", ARGV[3], "*", "event", event, "jobId", newId, "prev", "migrated")

-- LREM from the head stops at the id, which LPOS found near the head (newest first is the
-- order of the walk); LREM 0 would scan the whole list for every job moved.
if isList then rcall("LREM", container, 1, id) else rcall("ZREM", container, id) end
rcall("DEL", srcJob)
return {"moved", newId}
"""


@dataclass
class QueueMigration:
    """What was found on (and moved from) one legacy queue."""

    key: QueueKey
    source: str
    target: str
    found: dict[str, int] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    renumbered: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    completed_left: int = 0

    @property
    def remaining(self) -> int:
        return sum(self.found.values()) - sum(self.moved.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.key.value,
            "from": self.source,
            "to": self.target,
            "found": self.found,
            "moved": self.moved,
            "renumbered": self.renumbered,
            "conflicts": self.conflicts,
            "active": self.active,
            "completedKept": self.completed_left,
        }


@dataclass
class MigrationReport:
    dry_run: bool
    prefix: str
    queues: list[QueueMigration]

    @property
    def moved(self) -> int:
        return sum(sum(q.moved.values()) for q in self.queues)

    @property
    def found(self) -> int:
        return sum(sum(q.found.values()) for q in self.queues)

    @property
    def conflicts(self) -> list[str]:
        return [f"{q.source}:{job_id}" for q in self.queues for job_id in q.conflicts]

    @property
    def active(self) -> list[str]:
        return [f"{q.source}:{job_id}" for q in self.queues for job_id in q.active]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "prefix": self.prefix,
            "found": self.found,
            "moved": self.moved,
            "queues": [q.as_dict() for q in self.queues],
        }


def _key(prefix: str, queue: str, suffix: str = "") -> str:
    return f"{prefix}:{queue}:{suffix}"


async def _ids(client: Any, prefix: str, queue: str, state: str) -> list[str]:
    """Every id of one state, read PAGE at a time so no single read of a long list or set holds
    Redis up. Lists come newest first (RPUSH in this order keeps FIFO), sets in score order;
    an id read twice (a producer added jobs between two pages) is kept once."""
    key = _key(prefix, queue, state)
    is_list = state in ("wait", "paused", "active")
    read = client.lrange if is_list else client.zrange
    ids: dict[str, None] = {}
    start = 0
    while True:
        page = await read(key, start, start + PAGE - 1)
        ids.update((i, None) for i in page if not (is_list and _MARKER.match(i)))
        if len(page) < PAGE:
            return list(ids)
        start += PAGE


async def _active(client: Any, prefix: str) -> dict[QueueKey, list[str]]:
    return {key: await _ids(client, prefix, LEGACY_QUEUE_NAMES[key], "active") for key in QueueKey}


async def migrate_legacy(
    settings: Settings, dry_run: bool = False, batch: int = MOVES_PER_ROUND_TRIP
) -> MigrationReport:
    """Move every movable job from the legacy names to the current ones (see module doc).

    Raises `ActiveLegacyJobs` (moving nothing) while any legacy queue has active jobs.
    """
    if settings.bullwait_queue_names is QueueNaming.TAGGED:
        # Also: under a tagged naming's untagged prefix a legacy and a current queue are in two slots.
        raise TaggedNamesNotMigrated(
            "migrate-legacy moves jobs to the current queue names, not the tagged ones: run it with "
            "BULLWAIT_QUEUE_NAMES=current (and a hash-tagged BULLMQ_PREFIX on a cluster); nothing was moved"
        )
    prefix = settings.bullmq_prefix
    client = redis_client(settings)
    try:
        active = await _active(client, prefix)
        busy = {k: v for k, v in active.items() if v}
        if busy and not dry_run:
            listed = "; ".join(f"{LEGACY_QUEUE_NAMES[k]}: {', '.join(v[:10])}" for k, v in busy.items())
            raise ActiveLegacyJobs(
                f"legacy queues still have active jobs ({listed}): stop the legacy workers, "
                "wait for their jobs to finish (or for stalled-job recovery to return them to waiting), "
                "then run `bullwait migrate-legacy` again; nothing was moved"
            )
        script = client.register_script(MOVE_SCRIPT)
        await load_scripts(client, script)  # a no-op but on a cluster (queue_script)
        report = MigrationReport(dry_run, prefix, [])
        for key in QueueKey:
            report.queues.append(await _migrate_queue(client, script, prefix, key, active[key], dry_run, batch))
        return report
    finally:
        await client.aclose()


async def _migrate_queue(
    client: Any, script: Any, prefix: str, key: QueueKey, active: list[str], dry_run: bool, batch: int
) -> QueueMigration:
    source, target = LEGACY_QUEUE_NAMES[key], QUEUE_NAMES[key]
    result = QueueMigration(key, source, target, active=list(active))
    result.completed_left = int(await client.zcard(_key(prefix, source, "completed")))
    keys = [_key(prefix, source), _key(prefix, target)]
    for state in MOVABLE_STATES:
        ids = await _ids(client, prefix, source, state)
        result.found[state] = len(ids)
        result.moved[state] = 0
        if dry_run:
            custom = [job_id for job_id in ids if not job_id.isdigit()]
            for start in range(0, len(custom), batch):
                chunk = custom[start : start + batch]
                async with client.pipeline(transaction=False) as pipe:
                    for job_id in chunk:
                        pipe.exists(_key(prefix, target, job_id))
                    taken = await pipe.execute()
                result.conflicts.extend(job_id for job_id, hit in zip(chunk, taken) if hit)
            continue
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            async with client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    await queue_script(pipe, script, keys, [job_id, state, MAX_EVENTS])
                outcomes = await pipe.execute()
            for job_id, (status, new_id) in zip(chunk, outcomes):
                if status == "moved":
                    result.moved[state] += 1
                    if new_id != job_id:
                        result.renumbered[job_id] = new_id
                elif status == "conflict":
                    result.conflicts.append(job_id)
    return result
