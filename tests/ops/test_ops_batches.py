"""Bulk operations work in bounded batches, so no bullwait command blocks Redis for long.

No timing is asserted (bench/bulk_block.py measures the block times): these tests check the
structure instead, on a private redis-server that logs every command with its arguments
(slowlog-log-slower-than 0): how many script calls an operation made and how many jobs each
one was allowed to touch, and the `cleaned` events BullMQ's clean emits per call.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from bullwait.dev.embedded import RedisServer
from bullwait.ops.checks import CLEAN_STATES
from bullwait.ops.migrate import PAGE, migrate_legacy
from bullwait.ops.queues import BATCH, Ops
from bullwait.settings import Settings
from bullwait.waitlist.catalog import LEGACY_QUEUE_NAMES, QUEUE_NAMES, QueueKey, queue_name

JOBS = 12 * BATCH + 7  # a partial last batch too (Redis 7 logs a script's own commands too: keep it small)
WINDOW_ARG = 3 + 3 + 5 - 1  # EVALSHA sha numkeys KEYS[1..3] ARGV[1..]: ARGV[5] is the window

# BullMQ's layout for `n` jobs in one state (the fields clean reads); see bench/bulk_block.py.
_FILL = """
local base, state, n, old = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  local id = tostring(i)
  redis.call("HSET", base .. id, "name", "check-expiry", "data", "{}", "opts", "{}", "timestamp", old)
  if state == "wait" or state == "paused" or state == "active" then redis.call("LPUSH", base .. state, id)
  else redis.call("ZADD", base .. state, old + i, id) end
end
"""


@pytest.fixture(scope="module")
def logged_redis() -> Iterator[RedisServer]:
    logging = ["--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000"]
    server = RedisServer(appendonly=False, extra_args=logging).start()
    yield server
    server.cleanup()


@pytest.fixture
def admin(logged_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=logged_redis.port, decode_responses=True)
    yield client
    client.close()


def _settings(server: RedisServer) -> Settings:
    return Settings(redis_url=f"{server.url}/0", bullmq_prefix=f"t{uuid.uuid4().hex[:8]}")


def _fill(admin: redis.Redis, base: str, state: str, n: int) -> None:
    admin.eval(_FILL, 1, base, state, n, int(time.time() * 1000) - 86_400_000)


def _script_calls(admin: redis.Redis, base: str) -> list[list[str]]:
    """The EVALSHA calls on this queue's keys since the last SLOWLOG RESET, as argument lists."""
    calls = []
    for entry in admin.slowlog_get(100_000):
        command = entry["command"]
        args = (command.decode() if isinstance(command, bytes) else command).split(" ")
        if args[0].upper() == "EVALSHA" and any(a.startswith(base) for a in args[3:6]):
            calls.append(args)
    return calls


@pytest.mark.parametrize("state", CLEAN_STATES)
async def test_clean_of_any_state_goes_in_batches(logged_redis: RedisServer, admin: redis.Redis, state: str) -> None:
    settings = _settings(logged_redis)
    base = f"{settings.bullmq_prefix}:{queue_name(QueueKey.WAITLIST_EXPIRY, settings)}:"
    _fill(admin, base, state, JOBS)
    admin.slowlog_reset()
    async with await Ops.open(settings) as ops:
        dry = await ops.clean([QueueKey.WAITLIST_EXPIRY], state, 0, dry_run=True)
        dry_calls = _script_calls(admin, base)
        admin.slowlog_reset()
        [result] = await ops.clean([QueueKey.WAITLIST_EXPIRY], state, 0)
    calls = _script_calls(admin, base)
    assert dry[0].removed == JOBS and result.removed == JOBS
    assert admin.exists(base + state) == 0 and admin.exists(base + "1") == 0
    # Each call may look at no more than BATCH jobs (its window argument, ARGV[5]) ...
    for call in dry_calls + calls:
        assert int(call[WINDOW_ARG]) <= BATCH, call
    # ... so the clean took at least JOBS / BATCH calls, each removing at most BATCH jobs,
    # and emitted BullMQ's `cleaned` event per call that removed something.
    assert len(calls) >= math.ceil(JOBS / BATCH), len(calls)
    cleaned = [int(f["count"]) for _, f in admin.xrange(base + "events") if f.get("event") == "cleaned"]
    assert sum(cleaned) == JOBS and max(cleaned) <= BATCH and len(cleaned) >= math.ceil(JOBS / BATCH), cleaned
    if state not in ("completed", "failed"):  # finished sets are counted without a per-job look
        assert len(dry_calls) >= math.ceil(JOBS / BATCH), len(dry_calls)


@pytest.mark.parametrize("state", ["delayed", "wait", "active"])
async def test_a_clean_walks_past_jobs_it_keeps(logged_redis: RedisServer, admin: redis.Redis, state: str) -> None:
    """Windows full of jobs inside the grace period do not end the clean early."""
    settings = _settings(logged_redis)
    base = f"{settings.bullmq_prefix}:{queue_name(QueueKey.WAITLIST_EXPIRY, settings)}:"
    _fill(admin, base, state, 3 * BATCH)
    recent = int(time.time() * 1000)
    # the first two windows (oldest end of a list, lowest scores of a set) are recent: kept
    pipe = admin.pipeline()
    for i in range(1, 2 * BATCH + 1):
        pipe.hset(f"{base}{i}", "timestamp", recent)
    pipe.execute()
    async with await Ops.open(settings) as ops:
        [dry] = await ops.clean([QueueKey.WAITLIST_EXPIRY], state, 60_000, dry_run=True)
        [done] = await ops.clean([QueueKey.WAITLIST_EXPIRY], state, 60_000)
    assert dry.removed == done.removed == BATCH
    left = admin.llen(base + state) if state != "delayed" else admin.zcard(base + state)
    assert left == 2 * BATCH and all(admin.exists(f"{base}{i}") for i in (1, 2 * BATCH))
    assert not admin.exists(f"{base}{3 * BATCH}")


async def test_clean_limit_takes_the_oldest_first(logged_redis: RedisServer, admin: redis.Redis) -> None:
    settings = _settings(logged_redis)
    base = f"{settings.bullmq_prefix}:{queue_name(QueueKey.WAITLIST_EXPIRY, settings)}:"
    _fill(admin, base, "wait", 2 * BATCH + 10)
    async with await Ops.open(settings) as ops:
        [result] = await ops.clean([QueueKey.WAITLIST_EXPIRY], "wait", 0, limit=BATCH + 5)
    assert result.removed == BATCH + 5 and result.job_ids[:3] == ["1", "2", "3"]
    assert admin.llen(base + "wait") == BATCH + 5 and admin.lindex(base + "wait", -1) == str(BATCH + 6)


async def test_migrate_legacy_reads_ids_in_pages(logged_redis: RedisServer, admin: redis.Redis) -> None:
    """A legacy list or set is read PAGE ids at a time, never in one LRANGE/ZRANGE 0 -1."""
    settings = _settings(logged_redis)
    legacy = f"{settings.bullmq_prefix}:{LEGACY_QUEUE_NAMES[QueueKey.WAITLIST_EXPIRY]}:"
    jobs = 2 * PAGE + 3
    _fill(admin, legacy, "wait", jobs)
    admin.slowlog_reset()
    report = await migrate_legacy(settings)
    assert report.moved == jobs and admin.llen(legacy + "wait") == 0
    target = f"{settings.bullmq_prefix}:{QUEUE_NAMES[QueueKey.WAITLIST_EXPIRY]}:wait"
    assert admin.lrange(target, -3, -1) == ["3", "2", "1"], "the oldest job still runs first"
    reads = []
    for entry in admin.slowlog_get(100_000):
        command = entry["command"]
        args = (command.decode() if isinstance(command, bytes) else command).split(" ")
        if args[0].upper() in ("LRANGE", "ZRANGE") and args[1].startswith(legacy):
            reads.append((int(args[2]), int(args[3])))
    assert reads and all(0 <= start <= stop and stop - start + 1 <= PAGE for start, stop in reads), reads
