"""Operator logic behind `bullwait stats|cancel|clean|retry|promote|pause|resume|jobs|doctor`.

Works on any BullMQ queue of the catalog, whoever wrote the jobs (Node or Python):
it reads and changes the keys with BullMQ's own Lua scripts (shipped in bullmq-py)
where a change is made (clean drives BullMQ's clean functions a bounded batch at a
time), and with small read-only scripts of its own where it only looks. Every script of a queue touches only that queue's keys (`<prefix>:<queue>:*`),
so a hash-tagged prefix such as `{bull}` keeps each one in a single Cluster slot.

    async with await Ops.open(settings) as ops:
        rows = await ops.stats()

`Ops.open` pings Redis first with `check_redis` (one try, a few seconds), so an
unreachable Redis is one `RedisUnavailable`, not bullmq-py's minutes of retries.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError, WatchError

from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.engine.connection import Topology, check_redis, describe_redis, read_topology, redis_client
from bullwait.ops.durations import format_ms
from bullwait.errors import BadArgument, JobNotFound, RedisUnavailable
from bullwait.engine.internals import script_source
from bullwait.engine.jobcheck import hash_problems, not_utf8, printable, unescape
from bullwait.waitlist.producer import CANCELLABLE_STATES, CancelResult, Producer
from bullwait.settings import Settings
from bullwait.ops.snapshot import count_workers

# States as BullMQ names its keys; `waiting` is accepted for `wait`.
LIST_STATES = ("wait", "active", "paused")
ZSET_STATES = ("delayed", "prioritized", "completed", "failed", "waiting-children")
JOB_STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "paused", "waiting-children")
CLEAN_STATES = ("completed", "failed", "delayed", "wait", "active", "prioritized", "paused")
STATE_ALIASES = {"waiting": "wait"}

# Jobs per script call in bulk operations (clean, retry, promote): a call's time grows with
# the jobs it touches; this many keep each well under 50 ms on a busy server (measure with
# `python -m bench.bulk_block`).
BATCH = 500
SCAN_CAP = 1000  # active / prioritized entries a stats call looks at (stalled, oldest waiting)
OVERDUE_GRACE_MS = 1000  # a delayed job due longer ago than this should have run
MAX_JOB_ID = 512
# A count (--limit, --count) beyond any queue's size; larger ones would reach Lua as floats.
MAX_COUNT = 1_000_000_000
BULLMQ_PY_PAIRS = {"3.4": "6.4.0"}  # bullmq-py minor -> Node bullmq whose Lua it ships

# ---------------------------------------------------------------------------------------
# Read-only scripts of our own
# ---------------------------------------------------------------------------------------

# One call per queue: the counts exactly as Node bullmq's getJobCounts computes them
# (getCounts-1.lua: `waiting` is LLEN of the wait list, less a legacy "0:" marker at its
# tail; sets are ZCARD), without getCounts' RPOP of that marker, plus what stats and
# doctor need: paused flag, meta version, oldest waiting job, next delayed due time,
# overdue delayed jobs and active jobs without a lock (stalled).
_INSPECT_LUA = """
local rcall = redis.call
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local t = rcall("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function isMarker(id) return id and string.sub(id, 1, 2) == "0:" end
local function listCount(key)
  local n = rcall("LLEN", key)
  if n > 0 and isMarker(rcall("LINDEX", key, -1)) then n = n - 1 end
  return n
end
local function waitingSince(id)
  if not id then return nil end
  local f = rcall("HMGET", prefix .. id, "timestamp", "delay")
  local ts = tonumber(f[1])
  if not ts then return nil end
  return ts + (tonumber(f[2]) or 0)
end

local oldest = nil
local function older(ts) if ts and (not oldest or ts < oldest) then oldest = ts end end
for _, listKey in ipairs({KEYS[1], KEYS[8]}) do
  local tail = rcall("LINDEX", listKey, -1)
  if isMarker(tail) then tail = rcall("LINDEX", listKey, -2) end
  older(waitingSince(tail))
end
-- prioritized scores are priority * 2^32 + insertion counter: the oldest has the lowest counter
local items = rcall("ZRANGE", KEYS[4], 0, cap - 1, "WITHSCORES")
local bestId, bestCounter = nil, nil
for i = 1, #items, 2 do
  local c = math.fmod(tonumber(items[i + 1]), 4294967296)
  if not bestCounter or c < bestCounter then bestCounter = c; bestId = items[i] end
end
older(waitingSince(bestId))

local first = rcall("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
local nextDue = -1
if #first == 2 then nextDue = math.floor(tonumber(first[2]) / 4096) end
local overdue = rcall("ZCOUNT", KEYS[3], 0, (now - grace) * 4096 - 1)

local active = rcall("LRANGE", KEYS[2], 0, cap - 1)
local stalled = 0
for _, id in ipairs(active) do
  if rcall("EXISTS", prefix .. id .. ":lock") == 0 then stalled = stalled + 1 end
end

local meta = rcall("HMGET", KEYS[9], "paused", "version")
return {
  now, listCount(KEYS[1]), rcall("LLEN", KEYS[2]), rcall("ZCARD", KEYS[3]), rcall("ZCARD", KEYS[4]),
  rcall("ZCARD", KEYS[5]), rcall("ZCARD", KEYS[6]), rcall("ZCARD", KEYS[7]), listCount(KEYS[8]),
  meta[1] or "", meta[2] or "", oldest or -1, nextDue, overdue, stalled, #active
}
"""
_INSPECT_KEYS = ("wait", "active", "delayed", "prioritized", "completed", "failed", "waiting-children", "paused", "meta")

# `bullwait clean`, one bounded window per call. BullMQ's cleanJobsInSet-3.lua handles a whole
# set in one call (1.65 s for 100,000 delayed timers: Redis answers no one meanwhile). This
# driver reuses that script's own functions (everything before its `local result`: removeJob,
# isJobSchedulerJob, getTimestamp), so each job is selected and removed exactly as BullMQ
# does it (same timestamp fields, lock check for active, scheduler jobs kept, parent and
# deduplication keys, `cleaned` event), but it looks at no more than ARGV[5] jobs per call
# and returns a cursor for the next call:
#   lists (wait, active, paused): walked from the tail (oldest) towards the head; the cursor
#     is the innermost job kept, found again with LPOS, else the count of jobs kept;
#   delayed, prioritized: walked in set order; the cursor is the last job kept (ZRANK),
#     else its score;
#   completed, failed: every job scored up to the cutoff goes, the first ARGV[5] each call.
# ARGV[1] job key prefix, ARGV[2] cutoff (ms), ARGV[3] jobs still to remove (0: no limit),
# ARGV[4] state, ARGV[5] window, ARGV[6] jobs kept so far, ARGV[7] cursor job, ARGV[8] its
# score, ARGV[9] "1" to only report. Returns {ids, done, kept, cursor, score}.
# Jobs that move while a clean runs may be left for the next one (it is no snapshot).
_CLEAN_DRIVER_LUA = """
local setKey, state = KEYS[1], ARGV[4]
local window, kept, cursor, cursorScore = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local dry = ARGV[9] == "1"
local deleted = {}
local done = false
local function full() return limit > 0 and #deleted >= limit end
local function removable(job, attrs, checkLock)
  local jobKey = ARGV[1] .. job
  if checkLock and rcall("EXISTS", jobKey .. ":lock") == 1 then return false end
  if isJobSchedulerJob(job, jobKey, repeatKey) then return false end
  local jobTS = getTimestamp(jobKey, attrs)
  return (not jobTS or jobTS <= ARGV[2])
end
local function visit(job, score, attrs, checkLock, onRemove)
  local ok = removable(job, attrs, checkLock)
  if ok then
    if not dry then onRemove(); removeJob(job, true, ARGV[1], true) end
    deleted[#deleted + 1] = job
  end
  if dry or not ok then kept = kept + 1; cursor = job; cursorScore = score end
end
local function nothing() end

if state == "completed" or state == "failed" then
  local n = window
  if limit > 0 then n = math.min(limit, window) end
  local jobs = rcall("ZRANGEBYSCORE", setKey, 0, ARGV[2], "LIMIT", 0, n)
  for _, job in ipairs(jobs) do
    if not dry then removeJob(job, true, ARGV[1], true) end
    deleted[#deleted + 1] = job
  end
  if not dry and #deleted > 0 then rcall("ZREM", setKey, unpack(deleted)) end
  done = dry or #jobs < n or full()
elseif state == "delayed" or state == "prioritized" then
  local attrs = {"timestamp"}
  if state == "delayed" then attrs = {"processedOn", "timestamp"} end
  local rank = cursor ~= "" and rcall("ZRANK", setKey, cursor)
  local jobs
  if rank then
    jobs = rcall("ZRANGE", setKey, rank + 1, rank + window, "WITHSCORES")
  elseif cursorScore ~= "" then
    jobs = rcall("ZRANGEBYSCORE", setKey, "(" .. cursorScore, "+inf", "WITHSCORES", "LIMIT", 0, window)
  else
    jobs = rcall("ZRANGE", setKey, 0, window - 1, "WITHSCORES")
  end
  for i = 1, #jobs, 2 do
    if full() then break end
    visit(jobs[i], jobs[i + 1], attrs, false, nothing)
  end
  if not dry and #deleted > 0 then rcall("ZREM", setKey, unpack(deleted)) end
  done = #jobs < 2 * window or full()
else
  local len = rcall("LLEN", setKey)
  if cursor ~= "" then
    local pos = rcall("LPOS", setKey, cursor, "RANK", -1)
    if pos then kept = len - pos end
  end
  local stop = len - kept - 1
  if stop < 0 then
    done = true
  else
    local start = math.max(0, stop - window + 1)
    local jobs = rcall("LRANGE", setKey, start, stop)
    local attrs = {"finishedOn", "processedOn", "timestamp"}
    for i = #jobs, 1, -1 do
      if full() then break end
      -- counted from the tail, where the window is: a positive index walks the list from its head
      visit(jobs[i], "", attrs, state == "active", function() rcall("LSET", setKey, start + i - 1 - len, "") end)
    end
    -- the deletion markers are the first ones from the tail: only the kept jobs lie behind them
    if not dry and #deleted > 0 then rcall("LREM", setKey, -#deleted, "") end
    done = start == 0 or full()
  end
end
if not dry and (#deleted > 0 or done) then
  rcall("XADD", KEYS[2], "*", "event", "cleaned", "count", #deleted)
end
return {deleted, done and 1 or 0, kept, cursor, cursorScore}
"""


def _clean_batch_script() -> str:
    """BullMQ's clean functions followed by the windowed driver (see _CLEAN_DRIVER_LUA)."""
    bullmq = script_source("cleanJobsInSet")
    head, found, _ = bullmq.partition("\nlocal result\n")
    if not found or "local function removeJob(" not in head or "local limit = tonumber(ARGV[3])" not in head:
        raise RuntimeError("bullmq-py's cleanJobsInSet script changed shape: update bullwait.ops.actions's clean driver")
    return head + "\n" + _CLEAN_DRIVER_LUA


_CLEAN_BATCH_LUA = _clean_batch_script()
FINISHED_STATES = ("completed", "failed")

# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass
class QueueStats:
    """One queue: counts equal to Node bullmq's `getJobCounts`, plus what operators ask next."""

    name: str
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int
    prioritized: int
    paused: bool
    workers: int | None  # None: CLIENT LIST refused by the server
    workers_node: int | None
    workers_python: int | None
    waiting_children: int = 0
    paused_list: int = 0  # jobs in the legacy `paused` list (Node bullmq < 5 paused queues)
    oldest_waiting_ms: int | None = None
    next_delayed_in_ms: int | None = None
    overdue: int = 0
    stalled: int = 0
    active_scanned: int = 0
    meta_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("active_scanned")
        data["oldest_waiting_s"] = None if self.oldest_waiting_ms is None else round(self.oldest_waiting_ms / 1000, 3)
        data["next_delayed_in_s"] = None if self.next_delayed_in_ms is None else round(self.next_delayed_in_ms / 1000, 3)
        data.pop("oldest_waiting_ms")
        data.pop("next_delayed_in_ms")
        return data

    def to_row(self) -> dict[str, Any]:
        workers = "?" if self.workers is None else f"{self.workers} ({self.workers_node}/{self.workers_python})"
        return {
            "queue": self.name,
            "waiting": self.waiting,
            "prioritized": self.prioritized,
            "delayed": self.delayed,
            "active": self.active,
            "completed": self.completed,
            "failed": self.failed,
            "paused": "yes" if self.paused else "no",
            "workers (node/py)": workers,
            "oldest waiting": format_ms(self.oldest_waiting_ms),
        }


@dataclass
class CleanResult:
    queue: str
    status: str
    removed: int
    dry_run: bool
    job_ids: list[str] = field(default_factory=list)  # the first few, for the record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MoveResult:
    """Jobs moved back to wait by `retry` (from failed) or `promote` (from delayed)."""

    queue: str
    source: str
    moved: int
    left: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PauseResult:
    queue: str
    paused: bool
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobInfo:
    """A job as stored in Redis, readable whatever wrote it; times are epoch ms."""

    queue: str
    id: str
    state: str
    name: str | None = None
    data: Any = None
    data_is_json: bool = True
    opts: dict[str, Any] = field(default_factory=dict)
    attempts_made: int = 0
    attempts_started: int = 0
    stalled_counter: int = 0
    max_attempts: int | None = None
    priority: int = 0
    delay: int = 0
    progress: Any = None
    timestamp: int | None = None
    processed_on: int | None = None
    finished_on: int | None = None
    due_at: int | None = None
    failed_reason: str | None = None
    stacktrace: list[str] = field(default_factory=list)
    returnvalue: Any = None
    processed_by: str | None = None
    locked: bool = False
    logs: list[str] = field(default_factory=list)
    logs_count: int = 0
    problems: list[str] = field(default_factory=list)  # what a worker cannot read (bullwait.engine.jobcheck)

    def times(self) -> dict[str, str | None]:
        return {
            "created": local_time(self.timestamp),
            "due": local_time(self.due_at) if self.delay else None,
            "processed": local_time(self.processed_on),
            "finished": local_time(self.finished_on),
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["local_times"] = self.times()
        return data

    def to_row(self) -> dict[str, Any]:
        attempts = f"{self.attempts_made}/{self.max_attempts}" if self.max_attempts else str(self.attempts_made)
        reason = (self.failed_reason or "").splitlines()[0][:60] if self.failed_reason else ""
        when = self.finished_on or self.processed_on or (self.due_at if self.delay else self.timestamp)
        return {
            "id": self.id,
            "name": self.name or "",
            "state": self.state,
            "attempts": attempts,
            "priority": self.priority or "",
            "created": local_time(self.timestamp) or "",
            "due/processed/finished": local_time(when) or "",
            "failedReason": reason,
        }


@dataclass
class Check:
    status: str  # ok | warn | fail
    name: str
    detail: str

    def line(self, width: int = 28) -> str:
        return f"{self.status:<4}  {self.name:<{width}}  {self.detail}"


@dataclass
class DoctorReport:
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        return 2 if "fail" in statuses else 1 if "warn" in statuses else 0

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=10)
        return [c.line(width) for c in self.checks]

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "checks": [asdict(c) for c in self.checks]}


# ---------------------------------------------------------------------------------------
# Argument checks (shared by library callers and the CLI)
# ---------------------------------------------------------------------------------------


def normalize_state(state: str, allowed: Iterable[str] = JOB_STATES) -> str:
    wanted = STATE_ALIASES.get(state.strip().lower(), state.strip().lower())
    allowed = tuple(allowed)
    if wanted not in allowed:
        raise BadArgument(f"unknown status {state!r}; use one of: {', '.join(allowed)}")
    return wanted


# Keys BullMQ keeps for a queue itself (Node's QueueKeys, plus metrics): `jobs show Q meta`
# would read `<prefix>:<queue>:meta` and show the queue's meta hash as if it were a job.
QUEUE_OWN_KEYS = frozenset({
    "active", "wait", "waiting-children", "paused", "id", "delayed", "prioritized", "stalled-check", "completed",
    "failed", "stalled", "repeat", "limiter", "meta", "events", "pc", "marker", "de", "metrics",
})
# A job's own sub-keys: `<prefix>:<queue>:<id>:logs` and so on.
JOB_SUB_KEYS = frozenset({"logs", "lock", "dependencies", "processed", "failed", "unsuccessful"})


def check_job_id(job_id: str, what: str = "job id", own_keys: bool = True, queue: str = "QUEUE") -> str:
    """Refuse ids no producer can have written: empty, padded, control characters, huge,
    and (`own_keys`) the names of BullMQ's own keys, which no job can use."""
    if job_id is None or job_id == "" or not job_id.strip():
        raise BadArgument(f"{what} is empty; pass the id as shown by `bullwait jobs list`")
    if job_id != job_id.strip():
        raise BadArgument(f"{what} {job_id!r} has leading or trailing white space; quote the exact id")
    if any(unicodedata.category(ch).startswith("C") for ch in job_id):
        raise BadArgument(f"{what} {job_id!r} contains control characters; pass the exact id")
    if len(job_id) > MAX_JOB_ID:
        raise BadArgument(f"{what} is {len(job_id)} characters long; ids longer than {MAX_JOB_ID} are not accepted")
    if own_keys:
        _refuse_own_key(job_id, what, queue)
    return job_id


def _refuse_own_key(job_id: str, what: str, queue: str) -> None:
    head, _, tail = job_id.rpartition(":")
    first = job_id.split(":", 1)[0]
    scheduler = first == "repeat" and job_id.count(":") == 1  # a job scheduler's hash; its jobs have 3 parts
    if job_id in QUEUE_OWN_KEYS or (first in ("metrics", "de") and ":" in job_id) or scheduler:
        raise BadArgument(f"{what} {job_id!r} names a key BullMQ keeps for the queue itself, not a job; "
                          f"find job ids with `bullwait jobs list {queue} --status <state>`")
    if head and tail in JOB_SUB_KEYS and head not in QUEUE_OWN_KEYS:
        raise BadArgument(f"{what} {job_id!r} names the {tail!r} key of job {head!r}, not a job; "
                          f"show that job with `bullwait jobs show {queue} {head}`")


def check_count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if value < 1:
        raise BadArgument(f"{what} must be 1 or more (got {value}); leave it out for no limit")
    if value > MAX_COUNT:
        shown = value if value < 10**20 else f"a {len(str(value))}-digit number"
        raise BadArgument(f"{what} must be at most {MAX_COUNT} (got {shown}); leave it out for no limit")
    return value


def local_time(ms: int | None) -> str | None:
    """Epoch milliseconds as this host's local time, ISO 8601 with offset."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------
# Is this the right Redis db? (the catalog's queues, checked by key name)
# ---------------------------------------------------------------------------------------

# Keys any queue that has ever held a job (or had a worker) has at least one of. Checked
# by name with EXISTS: never KEYS or SCAN over a keyspace that other applications share.
QUEUE_MARK_KEYS = ("meta", "id", "events", "wait", "active", "delayed", "prioritized", "completed", "failed",
                   "paused", "waiting-children", "stalled-check", "marker", "repeat")


@dataclass
class QueuePresence:
    """Which of the catalog's queues have keys in the configured Redis db."""

    where: str
    prefix: str
    found: list[str]
    other_naming: list[str]  # found under the other BULLWAIT_QUEUE_NAMES
    checked: bool = True  # False: the server refused EXISTS (ACL)

    def warning(self) -> str | None:
        """What to tell the operator when this db looks like the wrong one; None when fine."""
        if not self.checked or self.found:
            return None
        text = (f"{self.where} holds none of the catalog's queues under prefix {self.prefix!r}: likely the wrong "
                "db (REDIS_URL's /<db> or REDIS_QUEUE_DB) or BULLMQ_PREFIX; fine for a new deployment")
        if self.other_naming:
            text += f"; it does hold {', '.join(self.other_naming)}: check BULLWAIT_QUEUE_NAMES"
        return text


async def queue_presence(client: Any, settings: Settings) -> QueuePresence:
    """One EXISTS per catalog queue (both namings), in one round trip."""
    from bullwait.waitlist.catalog import LEGACY_QUEUE_NAMES, QUEUE_NAMES

    current = [queue_name(k, settings) for k in QueueKey]
    other = [n for n in (*QUEUE_NAMES.values(), *LEGACY_QUEUE_NAMES.values()) if n not in current]
    prefix = settings.bullmq_prefix
    pipe = client.pipeline(transaction=False)
    for name in (*current, *other):
        pipe.exists(*(f"{prefix}:{name}:{suffix}" for suffix in QUEUE_MARK_KEYS))
    try:
        counts = await pipe.execute()
    except ResponseError:
        return QueuePresence(describe_redis(settings), prefix, [], [], checked=False)
    found = [n for n, c in zip(current, counts) if int(c)]
    others = [n for n, c in zip(other, counts[len(current):]) if int(c)]
    return QueuePresence(describe_redis(settings), prefix, found, others)


async def warn_if_wrong_db(settings: Settings, log: Any) -> None:
    """Log a warning when the configured db holds none of the catalog's queues (worker start-up)."""
    client = redis_client(settings, socket_timeout=settings.redis_connect_timeout, retry_on_timeout=False)
    try:
        warning = (await queue_presence(client, settings)).warning()
    except (RedisError, OSError):
        return  # the worker's own connection reports an unreachable Redis
    finally:
        await client.aclose()
    if warning:
        log.warning("no catalog queue in this Redis db", detail=warning)


# ---------------------------------------------------------------------------------------
# Workers, from one CLIENT LIST
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# The operations
# ---------------------------------------------------------------------------------------


class Ops:
    """Operator actions on the catalog's queues, over one Redis client."""

    def __init__(self, settings: Settings, client: Any, redis_version: str = "") -> None:
        self.settings = settings
        self.client = client
        self.redis_version = redis_version
        self.prefix = settings.bullmq_prefix
        self._inspect = client.register_script(_INSPECT_LUA)
        self._clean = client.register_script(_CLEAN_BATCH_LUA)
        self.batch = BATCH
        self._move = client.register_script(script_source("moveJobsToWait"))
        self._pause = client.register_script(script_source("pause"))
        self._state = client.register_script(script_source("getStateV2"))
        self._remove = client.register_script(script_source("removeJob"))

    @classmethod
    async def open(cls, settings: Settings, timeout: float | None = None) -> "Ops":
        """Check Redis answers (fail fast), then connect for the operations."""
        version = await check_redis(settings, timeout)
        # One retry, no backoff: an operator would rather see the error than wait.
        # Bytes that are not UTF-8 (a hand-written job) come back as surrogate escapes, not an error.
        client = redis_client(
            settings, socket_timeout=60, retry_on_timeout=False, retry=Retry(NoBackoff(), 1),
            encoding_errors="surrogateescape",
        )
        return cls(settings, client, version)

    async def __aenter__(self) -> "Ops":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.aclose()

    async def topology(self) -> Topology | None:
        """With Sentinel: what the sentinels say, and replica lag from the master (None otherwise)."""
        return await read_topology(self.settings, self.client)

    # --- keys -----------------------------------------------------------------------

    def name(self, key: QueueKey) -> str:
        return queue_name(key, self.settings)

    def base(self, key: QueueKey) -> str:
        return f"{self.prefix}:{self.name(key)}:"

    def k(self, key: QueueKey, suffix: str) -> str:
        return self.base(key) + suffix

    @staticmethod
    def _keys(keys: Iterable[QueueKey] | None) -> list[QueueKey]:
        return list(keys) if keys else list(QueueKey)

    # --- stats ----------------------------------------------------------------------

    async def client_list(self) -> list[dict[str, Any]] | None:
        """CLIENT LIST once; None when the server refuses it (ACL, managed Redis)."""
        try:
            return list(await self.client.client_list())
        except ResponseError:
            return None

    async def stats(
        self, keys: Iterable[QueueKey] | None = None, clients: list[dict[str, Any]] | None | bool = True
    ) -> list[QueueStats]:
        """Per queue counts (as Node's getJobCounts), paused, workers, oldest waiting job.

        One CLIENT LIST for all queues (pass `clients` to reuse one already read) and
        one script call per queue, all in one pipeline round trip.
        """
        wanted = self._keys(keys)
        if clients is True:
            clients = await self.client_list()
        pipe = self.client.pipeline(transaction=False)
        for key in wanted:
            await self._inspect(
                keys=[self.k(key, s) for s in _INSPECT_KEYS],
                args=[self.base(key), SCAN_CAP, OVERDUE_GRACE_MS],
                client=pipe,
            )
        replies = await pipe.execute()
        result = []
        for key, reply in zip(wanted, replies):
            now, wait, active, delayed, prio, done, failed, children, paused_list = (int(v) for v in reply[:9])
            paused_flag, version, oldest, next_due, overdue, stalled, scanned = reply[9:16]
            name = self.name(key)
            if not isinstance(clients, list):
                total = node = python = None
            else:
                total, node, python = count_workers(clients, self.prefix, name)
            oldest = int(oldest)
            next_due = int(next_due)
            result.append(
                QueueStats(
                    name=name,
                    waiting=wait,
                    active=active,
                    completed=done,
                    failed=failed,
                    delayed=delayed,
                    prioritized=prio,
                    paused=paused_flag not in ("", "0", None),
                    workers=total,
                    workers_node=node,
                    workers_python=python,
                    waiting_children=children,
                    paused_list=paused_list,
                    oldest_waiting_ms=max(0, now - oldest) if oldest >= 0 else None,
                    next_delayed_in_ms=next_due - now if next_due >= 0 else None,
                    overdue=int(overdue),
                    stalled=int(stalled),
                    active_scanned=int(scanned),
                    meta_version=version or None,
                )
            )
        return result

    # --- cancel ---------------------------------------------------------------------

    async def cancel(self, key: QueueKey, job_id: str) -> CancelResult:
        """Remove a job only while waiting or delayed (the seed's cancelExpiryTimer rule)."""
        check_job_id(job_id)
        stored = await self._stored_id(key, job_id)
        if not_utf8(stored):
            return await self._cancel_undecodable(key, stored, job_id)
        async with Producer(self.settings) as producer:
            return await producer.cancel_job(key, job_id)

    async def _stored_id(self, key: QueueKey, job_id: str) -> str:
        """`job_id`, or the id it shows in `\\xNN` form (bytes that are not UTF-8) if only that exists."""
        if "\\x" not in job_id or await self.client.exists(self.k(key, job_id)):
            return job_id
        raw = unescape(job_id)
        return raw if await self.client.exists(self.k(key, raw)) else job_id

    async def _cancel_undecodable(self, key: QueueKey, raw_id: str, shown_id: str) -> CancelResult:
        """`Producer.cancel_job` for an id only this client can send (its bytes are not UTF-8)."""
        job_key = self.k(key, raw_id)
        for _ in range(10):
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(job_key)
                state = await self.job_state(key, raw_id)
                if state == "unknown":
                    return CancelResult(self.name(key), shown_id, "missing")
                if state not in CANCELLABLE_STATES:
                    return CancelResult(self.name(key), shown_id, state)
                pipe.multi()
                await self._remove(keys=[job_key, self.k(key, "repeat")], args=[raw_id, 1, self.base(key)], client=pipe)
                try:
                    removed = (await pipe.execute())[0]
                except WatchError:
                    continue
                if removed == 1:
                    return CancelResult(self.name(key), shown_id, "cancelled")
        return CancelResult(self.name(key), shown_id, await self.job_state(key, raw_id))

    async def cancel_expiry(self, waitlist_id: str) -> CancelResult:
        check_job_id(waitlist_id, "waitlist id", own_keys=False)
        async with Producer(self.settings) as producer:
            return await producer.cancel_expiry_timer(waitlist_id)

    # --- clean ----------------------------------------------------------------------

    async def clean(
        self,
        keys: Iterable[QueueKey] | None,
        status: str,
        grace_ms: int,
        limit: int | None = None,
        dry_run: bool = False,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> list[CleanResult]:
        """BullMQ's `Queue.clean(grace, limit, status)` per queue; `dry_run` only counts.

        Every state goes in windows of `self.batch` jobs, one script call each, so Redis is
        never blocked long whatever the queue holds; `on_progress(queue, looked_at, total)`
        reports. Active jobs with a lock are never removed. With `limit`, the oldest jobs
        that qualify go first (BullMQ looks only at the last `limit` jobs of a list).
        """
        state = normalize_state(status, CLEAN_STATES)
        if grace_ms < 0:
            raise BadArgument(f"grace must not be negative (got {grace_ms} ms)")
        check_count(limit, "--limit")
        results = []
        for key in self._keys(keys):
            cutoff = int(time.time() * 1000) - grace_ms
            if dry_run and state in FINISHED_STATES:
                ids = await self._finished_preview(key, state, cutoff, limit)
                results.append(CleanResult(self.name(key), state, ids[0], True, ids[1]))
                continue
            removed, first = await self._clean_queue(key, state, cutoff, limit, dry_run, on_progress)
            results.append(CleanResult(self.name(key), state, removed, dry_run, first))
        return results

    async def _finished_preview(
        self, key: QueueKey, state: str, cutoff: int, limit: int | None
    ) -> tuple[int, list[str]]:
        """Finished jobs go by score alone: a count and the first few ids, no per-job look."""
        count = int(await self.client.zcount(self.k(key, state), 0, cutoff))
        first = await self.client.zrangebyscore(self.k(key, state), 0, cutoff, start=0, num=min(20, limit or 20))
        return (min(count, limit) if limit else count), list(first)

    async def _clean_queue(
        self,
        key: QueueKey,
        state: str,
        cutoff: int,
        limit: int | None,
        dry_run: bool,
        on_progress: Callable[[str, int, int], None] | None,
    ) -> tuple[int, list[str]]:
        """Windowed clean of one queue's state: (jobs removed or removable, the first 20 ids)."""
        set_key = self.k(key, state)
        script_keys = [set_key, self.k(key, "events"), self.k(key, "repeat")]
        if state in FINISHED_STATES:
            found = int(await self.client.zcount(set_key, 0, cutoff))
            total = min(found, limit) if limit else found
        elif state in ZSET_STATES:
            total = int(await self.client.zcard(set_key))
        else:
            total = int(await self.client.llen(set_key))
        if on_progress:
            on_progress(self.name(key), 0, total)
        removed, first, kept, cursor, score = 0, [], 0, "", ""
        while True:
            todo = 0 if limit is None else limit - removed
            args = [self.base(key), cutoff, todo, state, self.batch, kept, cursor, score, int(dry_run)]
            ids, done, kept, cursor, score = await self._clean(keys=script_keys, args=args)
            removed += len(ids)
            first.extend(ids[: 20 - len(first)])
            if on_progress:
                on_progress(self.name(key), min(_looked_at(state, dry_run, removed, int(kept)), total), total)
            if int(done):
                return removed, first

    # --- retry / promote ----------------------------------------------------------------

    async def movable(self, keys: Iterable[QueueKey] | None, source: str, count: int | None) -> dict[str, int]:
        """How many jobs `retry` (source failed) or `promote` (delayed) would move, per queue."""
        wanted = self._keys(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in wanted:
            pipe.zcard(self.k(key, source))
        sizes = await pipe.execute()
        return {self.name(k): int(n) if count is None else min(int(n), count) for k, n in zip(wanted, sizes)}

    async def retry(self, keys: Iterable[QueueKey] | None = None, count: int | None = None) -> list[MoveResult]:
        """Failed -> wait (BullMQ's retryJobs: oldest failures first; attemptsMade is kept)."""
        check_count(count, "--count")
        return [await self._move_to_wait(key, "failed", count, int(time.time() * 1000)) for key in self._keys(keys)]

    async def promote(self, keys: Iterable[QueueKey] | None = None, count: int | None = None) -> list[MoveResult]:
        """Delayed -> wait now (BullMQ's promoteJobs: soonest due first)."""
        check_count(count, "--count")
        return [await self._move_to_wait(key, "delayed", count, 1.7976931348623157e308) for key in self._keys(keys)]

    async def _move_to_wait(self, key: QueueKey, source: str, count: int | None, upto: float) -> MoveResult:
        names = ("", "events", source, "wait", "paused", "meta", "active", "marker")
        script_keys = [self.k(key, n) for n in names]
        moved = 0
        while count is None or moved < count:
            batch = BATCH if count is None else min(BATCH, count - moved)
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zcard(self.k(key, source))
                await self._move(keys=script_keys, args=[batch, upto, source], client=pipe)
                pipe.zcard(self.k(key, source))
                before, _, after = await pipe.execute()
            moved += int(before) - int(after)
            if int(before) - int(after) < batch:
                break
        left = int(await self.client.zcard(self.k(key, source)))
        return MoveResult(self.name(key), source, moved, left)

    # --- pause / resume -----------------------------------------------------------------

    async def set_paused(self, key: QueueKey, paused: bool) -> PauseResult:
        """BullMQ's pause/resume (pause-7.lua): meta flag, marker, `paused`/`resumed` event."""
        was = await self.client.hget(self.k(key, "meta"), "paused")
        was_paused = was not in (None, "", "0")
        src, dst = ("wait", "paused") if paused else ("paused", "wait")
        script_keys = [self.k(key, n) for n in (src, dst, "meta", "prioritized", "events", "delayed", "marker")]
        for _ in range(10_000):  # resume moves legacy paused lists 7000 jobs per call
            remaining = await self._pause(keys=script_keys, args=["paused" if paused else "resumed", "1"])
            if not remaining:
                break
        return PauseResult(self.name(key), paused, was_paused != paused)

    # --- jobs -----------------------------------------------------------------------

    async def list_jobs(self, key: QueueKey, status: str, limit: int = 20) -> list[JobInfo]:
        """Jobs of one state: next to run first (wait, prioritized, delayed), newest first (finished)."""
        state = normalize_state(status)
        check_count(limit, "--limit")
        set_key = self.k(key, state)
        if state in LIST_STATES:
            ids = list(reversed(await self.client.lrange(set_key, -limit, -1)))
            ids = [i for i in ids if not i.startswith("0:")]
        elif state in ("completed", "failed"):
            ids = list(await self.client.zrevrange(set_key, 0, limit - 1))
        else:
            ids = list(await self.client.zrange(set_key, 0, limit - 1))
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.k(key, job_id))
        hashes = await pipe.execute() if ids else []
        return [
            _job_info(self.name(key), job_id, "waiting" if state == "wait" else state, raw)
            for job_id, raw in zip(ids, hashes)
            if raw
        ]

    async def job_state(self, key: QueueKey, job_id: str) -> str:
        names = ("completed", "failed", "delayed", "active", "wait", "paused", "waiting-children", "prioritized")
        return str(await self._state(keys=[self.k(key, n) for n in names], args=[job_id, self.k(key, job_id)]))

    async def show_job(self, key: QueueKey, job_id: str) -> JobInfo:
        """One job with data, options, attempts, failure, stack trace and logs."""
        check_job_id(job_id)
        job_id = await self._stored_id(key, job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.k(key, job_id))
            pipe.lrange(self.k(key, f"{job_id}:logs"), 0, -1)
            pipe.exists(self.k(key, f"{job_id}:lock"))
            raw, logs, locked = await pipe.execute()
        if not raw:
            listing = f"bullwait jobs list {self.name(key)} --status <state>"
            raise JobNotFound(f"no job {printable(job_id)!r} on {self.name(key)}; list them with `{listing}`")
        info = _job_info(self.name(key), job_id, await self.job_state(key, job_id), raw)
        info.logs = [printable(str(line)) for line in logs]
        info.logs_count = len(logs)
        info.locked = bool(locked)
        return info

    # --- doctor ---------------------------------------------------------------------

    async def doctor(self, keys: Iterable[QueueKey] | None = None) -> DoctorReport:
        checks: list[Check] = []
        t0 = time.time()
        seconds, micros = await self.client.time()
        t1 = time.time()
        server = await self.client.info("server")
        memory = await self.client.info("memory")
        checks.append(_check_version(self.redis_version, describe_redis(self.settings)))
        topology = await read_topology(self.settings, self.client)
        checks.extend(topology_checks(topology))
        checks.extend(durability_checks(topology, self.settings.bullwait_wait_replicas))
        checks.append(_check_policy(str(memory.get("maxmemory_policy", "unknown"))))
        checks.append(_check_hz(int(server.get("configured_hz", server.get("hz", 10)))))
        redis_ms = int(seconds) * 1000 + int(micros) / 1000
        checks.append(_check_clock(((t0 + t1) / 2) * 1000 - redis_ms, (t1 - t0) * 1000))
        checks.append(_check_memory(int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))))
        checks.append(_check_listpack(await self._hash_value_limit()))
        wanted = self._keys(keys)
        checks.append(_check_names([self.name(k) for k in wanted]))
        clients = await self.client_list()
        all_stats = await self.stats(wanted, clients)
        workers = sum(s.workers or 0 for s in all_stats)
        checks.append(_check_presence(await queue_presence(self.client, self.settings), workers))
        for stats in all_stats:
            checks.extend(_queue_checks(stats, self.settings, clients is not None))
        return DoctorReport(checks)


    async def _hash_value_limit(self) -> int | None:
        """`hash-max-listpack-value` (Redis 7) or `-ziplist-value` (6.2); None if CONFIG is not allowed."""
        for name in ("hash-max-listpack-value", "hash-max-ziplist-value"):
            try:
                found = await self.client.config_get(name)
            except RedisError:
                return None
            if found.get(name) is not None:
                return int(found[name])
        return None


async def run_doctor(settings: Settings, keys: Iterable[QueueKey] | None = None) -> DoctorReport:
    """The doctor, including an unreachable Redis as a failed check (exit code 2)."""
    try:
        ops = await Ops.open(settings)
    except RedisUnavailable as exc:
        return DoctorReport([Check("fail", "redis", str(exc)), *topology_checks(await read_topology(settings))])
    async with ops:
        try:
            return await ops.doctor(keys)
        except ResponseError as exc:
            return DoctorReport([Check("fail", "redis", f"Redis refused a command the checks need ({exc}); "
                                        "run the doctor as a user allowed INFO, TIME, CLIENT LIST and EVALSHA")])
        except (RedisError, OSError) as exc:
            return DoctorReport([Check("fail", "redis", f"Redis stopped answering during the checks: {exc}")])


# ---------------------------------------------------------------------------------------
# Doctor checks (pure functions of what was read)
# ---------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


def topology_checks(topology: Topology | None) -> list[Check]:
    """With Sentinel: the sentinels that answer, the master they name, each replica's link and lag."""
    if topology is None:
        return []
    total = len(topology.sentinels)
    silent = [f"{s.address} ({s.error})" for s in topology.sentinels if not s.answering]
    if not silent:
        checks = [Check("ok", "sentinels", f"{total}/{total} answer")]
    else:
        status = "fail" if topology.answering == 0 else "warn"
        checks = [Check(status, "sentinels", f"{topology.answering}/{total} answer; not: {', '.join(silent)}; "
                        "a failover needs a majority of them")]
    if topology.master is None:
        return checks
    checks.append(Check("ok", "sentinel master", f"{topology.master_name!r} at {topology.master}"))
    if not topology.replicas:
        checks.append(Check("warn", "sentinel replicas", "none: a failover has nowhere to go; add a replica"))
    for replica in topology.replicas or []:
        late = replica.link != "ok" or (replica.lag_seconds or 0) > REPLICA_LAG_WARN_SECONDS
        advice = "; a failover now would lose what it has not received" if late else ""
        checks.append(Check("warn" if late else "ok", "sentinel replica", replica.describe() + advice))
    return checks


REPLICA_LAG_WARN_SECONDS = 10


def durability_checks(topology: Topology | None, wait_replicas: int) -> list[Check]:
    """With Sentinel and BULLWAIT_WAIT_REPLICAS: whether WAIT can keep its promise here.

    A write WAIT counts as confirmed survives a failover only if the promoted replica has
    it. A replica still following the old master after another was promoted can confirm a
    write the old master took too late, which the failover then drops (seen in the
    two-replica failover test): every replica must confirm."""
    if topology is None or topology.master is None or wait_replicas <= 0 or topology.replicas is None:
        return []
    have = len(topology.replicas)
    name = f"BULLWAIT_WAIT_REPLICAS={wait_replicas}"
    if wait_replicas > have:
        return [Check("fail", "durable writes", f"{name} but the master has {have} replica(s): every producer add, "
                      "send claim and waitlist change fails; add replicas or lower it")]
    if wait_replicas < have:
        return [Check("warn", "durable writes", f"{name} with {have} replicas: a write one replica confirmed can still "
                      f"be lost in a failover; set it to {have} (then one replica down stops durable writes)")]
    if have == 1:
        return [Check("warn", "durable writes", f"{name} with one replica: after a failover the new master has no "
                      "replica until the old one rejoins, and durable writes wait (or fail) until then; "
                      "a second replica, with BULLWAIT_WAIT_REPLICAS=2, avoids the wait")]
    return [Check("ok", "durable writes", f"{name}: every replica confirms each write")]


def _check_version(version: str, where: str) -> Check:
    if _version_tuple(version) >= (6, 2):
        return Check("ok", "redis", f"PONG from {where}, Redis {version}")
    return Check("fail", "redis", f"Redis {version} at {where}: BullMQ needs Redis 6.2 or newer; upgrade Redis")


def _check_policy(policy: str) -> Check:
    if policy == "noeviction":
        return Check("ok", "maxmemory-policy", "noeviction")
    level = "fail" if policy.startswith("allkeys") else "warn"
    return Check(
        level,
        "maxmemory-policy",
        f"{policy}: under memory pressure Redis may evict job keys or locks (lost timers, double runs); "
        "set `maxmemory-policy noeviction`",
    )


def _check_hz(hz: int) -> Check:
    """Redis ends blocking waits on its `hz` ticks: that bounds how late a due timer wakes a
    Node worker (measured on Redis 7.0: hz 10 mean 49 ms / max 100 ms, hz 100 mean 7 ms /
    max 13 ms). bullwait's own workers wait the last 110 ms before a due time in their
    event loop, ~1 ms late at any hz. The default meets the seed's ±100 ms: not a warning.
    """
    tick = 1000 // max(hz, 1)
    if hz >= 100:
        return Check("ok", "hz", f"hz {hz}: due timers wake Node workers within ~{tick} ms")
    if hz >= 10:
        return Check(
            "ok",
            "hz",
            f"hz {hz}: due timers wake Node workers up to ~{tick} ms late (bullwait workers ~1 ms); "
            "for ~10 ms on Node too set `hz 100` in redis.conf (or CONFIG SET hz 100)",
        )
    return Check("warn", "hz", f"hz {hz}: due timers may wake Node workers ~{tick} ms late; set `hz 100` in redis.conf")


def _check_listpack(limit: int | None) -> Check:
    """A pending timer's job hash has `data` and `opts` values over Redis's default 64-byte
    listpack limit, so Redis stores it as a full hash: ~1,070 bytes per timer (~1,270 with
    UUID ids), ~670 (~930) with `hash-max-listpack-value 512` (bench/ at 100,000 timers)."""
    if limit is None:
        return Check("ok", "memory-encoding", "CONFIG GET not allowed for this user; skipped")
    if limit >= 512:
        return Check("ok", "memory-encoding", f"hash-max-listpack-value {limit}: job hashes stay compact (~670 B per timer)")
    return Check(
        "ok",
        "memory-encoding",
        f"hash-max-listpack-value {limit}: each pending timer takes ~1,070 B; "
        "`hash-max-listpack-value 512` in redis.conf brings it to ~670 B",
    )


def _check_clock(skew_ms: float, rtt_ms: float) -> Check:
    direction = "ahead of" if skew_ms > 0 else "behind"
    detail = f"this host is {abs(skew_ms):.0f} ms {direction} Redis TIME (round trip {rtt_ms:.0f} ms)"
    if abs(skew_ms) <= max(100.0, rtt_ms):
        return Check("ok", "clock", detail)
    level = "fail" if abs(skew_ms) > 1000 else "warn"
    return Check(level, "clock", detail + "; delayed jobs are scored with each producer's clock: sync clocks with NTP")


def _check_memory(used: int, maxmemory: int) -> Check:
    if not maxmemory:
        return Check("ok", "memory", f"used {_bytes(used)}, no maxmemory limit (Redis grows until the host runs out)")
    ratio = used / maxmemory
    detail = f"used {_bytes(used)} of maxmemory {_bytes(maxmemory)} ({ratio:.0%})"
    if ratio >= 0.9:
        return Check("fail", "memory", detail + ": near OOM, new jobs will be refused; clean finished jobs or raise maxmemory")
    if ratio >= 0.75:
        return Check("warn", "memory", detail + ": clean finished jobs (`bullwait clean`) or raise maxmemory")
    return Check("ok", "memory", detail)


def _check_presence(presence: QueuePresence, workers: int) -> Check:
    if not presence.checked:
        return Check("ok", "queues-found", "EXISTS not allowed for this user; skipped")
    if presence.found:
        found = ", ".join(presence.found)
        return Check("ok", "queues-found", f"{found} in {presence.where}, prefix {presence.prefix!r}")
    if workers:
        return Check("ok", "queues-found", f"no jobs yet in {presence.where}, but {workers} worker(s) serve its queues")
    return Check("warn", "queues-found", presence.warning() or "")


def _check_names(names: list[str]) -> Check:
    bad = [n for n in names if ":" in n]
    if not bad:
        return Check("ok", "queue-names", "colon-free: Node bullmq 5.12.12+ and Bull Board can open them")
    return Check(
        "warn",
        "queue-names",
        f"{', '.join(bad)}: Node bullmq >= 5.12.12 refuses names with ':' (fine for Node 4.x producers only); "
        "move to BULLWAIT_QUEUE_NAMES=current",
    )


def _queue_checks(s: QueueStats, settings: Settings, clients_ok: bool) -> list[Check]:
    q = s.name
    out = []
    if s.paused:
        out.append(Check("warn", f"{q}/paused", f"paused: nothing is processed; `bullwait resume {q}` when intended"))
    else:
        out.append(Check("ok", f"{q}/paused", "not paused"))
    if not clients_ok:
        out.append(Check("warn", f"{q}/workers", "cannot tell: the server refused CLIENT LIST (allow it for this user)"))
    elif not s.workers:
        out.append(Check("warn", f"{q}/workers", f"no worker (Node or Python) serves it; start `bullwait worker --queue {q}`"))
    else:
        out.append(Check("ok", f"{q}/workers", f"{s.workers} (Node {s.workers_node}, Python {s.workers_python})"))
    if s.overdue:
        late = -(s.next_delayed_in_ms or 0)
        level = "fail" if late > 60_000 else "warn"
        why = "the queue is paused" if s.paused else "no worker is promoting them" if not s.workers else "workers are behind"
        out.append(
            Check(level, f"{q}/overdue", f"{s.overdue} delayed job(s) past due, the oldest by {format_ms(late)}: {why}; "
                  "check workers (`bullwait stats`) or promote them (`bullwait promote`)")
        )
    else:
        nxt = "none delayed" if s.next_delayed_in_ms is None else f"next due in {format_ms(s.next_delayed_in_ms)}"
        out.append(Check("ok", f"{q}/overdue", f"no delayed job past due ({s.delayed} delayed, {nxt})"))
    if s.stalled:
        out.append(
            Check("warn", f"{q}/stalled", f"{s.stalled} active job(s) without a lock (their worker died); a running "
                  "worker moves them back to wait within its stalled interval (BULLWAIT_STALLED_INTERVAL_MS); start one if none runs")
        )
    else:
        scanned = "" if s.active <= s.active_scanned else f" (first {s.active_scanned} checked)"
        out.append(Check("ok", f"{q}/stalled", f"{s.active} active, all locked{scanned}"))
    limit = settings.health_max_failed
    if s.failed > limit:
        out.append(
            Check("warn", f"{q}/failed", f"{s.failed} failed (over HEALTH_MAX_FAILED={limit}): inspect "
                  f"`bullwait jobs list {q} --status failed`, then `bullwait retry --queue {q}` or `bullwait clean`")
        )
    else:
        out.append(Check("ok", f"{q}/failed", f"{s.failed} failed (limit {limit})"))
    out.append(_check_meta_version(q, s.meta_version, s.workers_node or 0))
    return out


def bullmq_py_pairing() -> tuple[str, str | None]:
    """(installed bullmq-py version, Node bullmq version whose Lua it ships, if known)."""
    try:
        installed = importlib.metadata.version("bullmq")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        installed = "unknown"
    minor = ".".join(installed.split(".")[:2])
    return installed, BULLMQ_PY_PAIRS.get(minor)


def _check_meta_version(q: str, version: str | None, node_workers: int) -> Check:
    installed, paired = bullmq_py_pairing()
    pair = f"bullmq-py {installed} ships the Lua of Node bullmq {paired or '?'}"
    name = f"{q}/bullmq-version"
    if not version:
        return Check("ok", name, f"no Node bullmq has written this queue's meta yet; {pair}")
    lib, _, number = version.rpartition(":")
    major = _version_tuple(number)[0]
    paired_major = _version_tuple(paired or "6")[0]
    if lib and "bullmq" not in lib:
        return Check("warn", name, f"meta written by {version!r}, not Node bullmq; {pair}")
    if major == paired_major:
        return Check("ok", name, f"{version} pairs with {pair}")
    if major <= 4:
        if node_workers:
            return Check("fail", name, f"{version} with {node_workers} Node worker(s): Node 4.x workers and Python "
                         f"workers must not share a queue (v5 changed the wake-up marker); upgrade Node to 6.x")
        return Check("warn", name, f"{version}: fine as a producer for Python workers, but never run Node 4.x "
                     f"workers on this queue; upgrade Node to {paired_major}.x ({pair})")
    return Check("warn", name, f"{version} is not the tested pairing ({pair}); run Node bullmq {paired_major}.x")


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

_OPTS_DECODE = {"de": "deduplication", "fpof": "failParentOnFailure", "cpof": "continueParentOnFailure",
                "idof": "ignoreDependencyOnFailure", "kl": "keepLogs", "rdof": "removeDependencyOnFailure"}


def _json_or_raw(raw: str | None, default: Any = None) -> tuple[Any, bool]:
    if raw is None:
        return default, True
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        return raw, False


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _job_info(queue: str, job_id: str, state: str, stored: dict[str, str]) -> JobInfo:
    """Every field readable and printable, whatever the hash holds; bytes that are not UTF-8
    shown as `\\xNN` (the id too: `jobs show` and `cancel` accept that form)."""
    problems = hash_problems(stored, job_id)
    raw = {printable(k): printable(v) for k, v in stored.items()}
    data, data_ok = _json_or_raw(raw.get("data"), {})
    if not_utf8(stored.get("data")):
        data, data_ok = raw["data"], False
    opts, _ = _json_or_raw(raw.get("opts"), {})
    if not isinstance(opts, dict):
        opts = {"raw": opts}
    opts = {_OPTS_DECODE.get(k, k): v for k, v in opts.items()}
    stack, _ = _json_or_raw(raw.get("stacktrace"), [])
    returnvalue, _ = _json_or_raw(raw.get("returnvalue"))
    progress, _ = _json_or_raw(raw.get("progress"))
    timestamp = _int(raw.get("timestamp"))
    delay = _int(raw.get("delay")) or 0
    attempts = opts.get("attempts")
    return JobInfo(
        queue=queue,
        id=printable(job_id),
        state=state,
        name=raw.get("name"),
        data=data,
        data_is_json=data_ok,
        opts=opts,
        attempts_made=_int(raw.get("atm") or raw.get("attemptsMade")) or 0,
        attempts_started=_int(raw.get("ats")) or 0,
        stalled_counter=_int(raw.get("stc")) or 0,
        max_attempts=attempts if isinstance(attempts, int) else None,
        priority=_int(raw.get("priority")) or 0,
        delay=delay,
        progress=progress,
        timestamp=timestamp,
        processed_on=_int(raw.get("processedOn")),
        finished_on=_int(raw.get("finishedOn")),
        due_at=(timestamp + delay) if timestamp is not None and delay else None,
        failed_reason=raw.get("failedReason") or None,
        stacktrace=[str(s) for s in stack] if isinstance(stack, list) else [str(stack)],
        returnvalue=returnvalue,
        processed_by=raw.get("pb") or None,
        problems=problems,
    )


def _looked_at(state: str, dry_run: bool, removed: int, kept: int) -> int:
    """Jobs a clean has examined so far: finished sets look only at what they remove; a dry
    run keeps (counts as kept) every job it looks at."""
    if state in FINISHED_STATES:
        return removed
    return kept if dry_run else removed + kept


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
