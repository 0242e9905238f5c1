"""Operator actions on the catalog's queues: `bullwait stats|cancel|clean|retry|promote|pause|resume|jobs`.

Works on any BullMQ queue of the catalog, whoever wrote the jobs (Node or Python): it
changes the keys with BullMQ's own Lua scripts (shipped in bullmq-py; clean drives BullMQ's
clean functions a bounded batch at a time, bullwait.ops.scripts) and reads counts with the
one queue reader (bullwait.ops.snapshot).

    async with await Ops.open(settings) as ops:
        rows = await ops.stats()

`Ops.open` pings Redis first with `check_redis` (one try, a few seconds), so an
unreachable Redis is one `RedisUnavailable`, not bullmq-py's minutes of retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bullwait.engine.cancel import cancel_waiting
from bullwait.engine.connection import (
    Topology,
    check_redis,
    load_scripts,
    queue_script,
    read_topology,
    redis_client,
)
from bullwait.engine.internals import (
    GET_STATE_KEYS,
    move_jobs_to_wait_keys,
    pause_keys,
    script_source,
)
from bullwait.engine.jobcheck import not_utf8, printable, unescape
from bullwait.errors import BadArgument, JobNotFound
from bullwait.ops.checks import (
    CLEAN_STATES,
    FINISHED_STATES,
    LIST_STATES,
    ZSET_STATES,
    check_count,
    normalize_state,
)
from bullwait.ops.jobs import job_info
from bullwait.ops.results import CleanResult, JobInfo, MoveResult, PauseResult
from bullwait.ops.scripts import CLEAN_BATCH_LUA
from bullwait.ops.snapshot import QueueSnapshot, read_snapshots
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.waitlist.jobids import check_job_id
from bullwait.waitlist.producer import CancelResult, Producer

# Jobs per script call in bulk operations (clean, retry, promote): a call's time grows with
# the jobs it touches; this many keep each well under 50 ms on a busy server (measure with
# `python -m bench.bulk_block`).
BATCH = 500


class Ops:
    """Operator actions on the catalog's queues, over one Redis client."""

    def __init__(self, settings: Settings, client: Any, redis_version: str = "") -> None:
        self.settings = settings
        self.client = client
        self.redis_version = redis_version
        self.prefix = settings.bullmq_prefix
        self._clean = client.register_script(CLEAN_BATCH_LUA)
        self.batch = BATCH
        self._move = client.register_script(script_source("moveJobsToWait"))
        self._pause = client.register_script(script_source("pause"))
        self._state = client.register_script(script_source("getStateV2"))
        self._remove = client.register_script(script_source("removeJob"))

    @classmethod
    async def open(cls, settings: Settings, timeout: float | None = None) -> Ops:
        """Check Redis answers (fail fast), then connect for the operations."""
        version = await check_redis(settings, timeout)
        # One retry, no backoff: an operator would rather see the error than wait.
        # Bytes that are not UTF-8 (a hand-written job) come back as surrogate escapes, not an error.
        client = redis_client(
            settings,
            socket_timeout=60,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 1),
            encoding_errors="surrogateescape",
        )
        ops = cls(settings, client, version)
        await load_scripts(client, ops._move)  # sent in pipelines (queue_script)
        return ops

    async def __aenter__(self) -> Ops:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.aclose()

    async def topology(self) -> Topology | None:
        """With Sentinel: what the sentinels say, and replica lag from the master (None otherwise)."""
        return await read_topology(self.settings, self.client)

    # --- keys -----------------------------------------------------------------------

    def queue_name(self, key: QueueKey) -> str:
        return queue_name(key, self.settings)

    def key_prefix(self, key: QueueKey) -> str:
        """`<prefix>:<queue>:`, which every key of the queue and of its jobs starts with."""
        return f"{self.prefix}:{self.queue_name(key)}:"

    def redis_key(self, key: QueueKey, suffix: str) -> str:
        """The queue's key `suffix` (`wait`, `meta`, a job id...)."""
        return self.key_prefix(key) + suffix

    @staticmethod
    def _keys(keys: Iterable[QueueKey] | None) -> list[QueueKey]:
        return list(keys) if keys else list(QueueKey)

    # --- stats ----------------------------------------------------------------------

    async def stats(self, keys: Iterable[QueueKey] | None = None) -> list[QueueSnapshot]:
        """Per queue counts (as Node's getJobCounts), paused, workers, oldest waiting job:
        the one reader /metrics and /health use too (bullwait.ops.snapshot), in one round trip."""
        names = [self.queue_name(key) for key in self._keys(keys)]
        return await read_snapshots(self.client, self.prefix, names)

    # --- cancel ---------------------------------------------------------------------

    async def cancel(self, key: QueueKey, job_id: str) -> CancelResult:
        """Remove a job only while waiting or delayed (the NestJS module's cancelExpiryTimer rule)."""
        check_job_id(job_id)
        stored = await self._stored_id(key, job_id)
        if not_utf8(stored):
            return await self._cancel_undecodable(key, stored, job_id)
        async with Producer(self.settings) as producer:
            return await producer.cancel_job(key, job_id)

    async def _stored_id(self, key: QueueKey, job_id: str) -> str:
        """`job_id`, or the id it shows in `\\xNN` form (bytes that are not UTF-8) if only that exists."""
        if "\\x" not in job_id or await self.client.exists(self.redis_key(key, job_id)):
            return job_id
        raw = unescape(job_id)
        return raw if await self.client.exists(self.redis_key(key, raw)) else job_id

    async def _cancel_undecodable(self, key: QueueKey, raw_id: str, shown_id: str) -> CancelResult:
        """`Producer.cancel_job` for an id only this client can send (its bytes are not UTF-8)."""
        outcome = await cancel_waiting(
            self.client, self._remove, self.key_prefix(key), raw_id, lambda: self.job_state(key, raw_id)
        )
        return CancelResult(self.queue_name(key), shown_id, outcome)

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
        check_count(limit, "limit")
        results = []
        for key in self._keys(keys):
            cutoff = int(time.time() * 1000) - grace_ms
            if dry_run and state in FINISHED_STATES:
                ids = await self._finished_preview(key, state, cutoff, limit)
                results.append(CleanResult(self.queue_name(key), state, ids[0], True, ids[1]))
                continue
            removed, first = await self._clean_queue(key, state, cutoff, limit, dry_run, on_progress)
            results.append(CleanResult(self.queue_name(key), state, removed, dry_run, first))
        return results

    async def _finished_preview(
        self, key: QueueKey, state: str, cutoff: int, limit: int | None
    ) -> tuple[int, list[str]]:
        """Finished jobs go by score alone: a count and the first few ids, no per-job look."""
        count = int(await self.client.zcount(self.redis_key(key, state), 0, cutoff))
        first = await self.client.zrangebyscore(
            self.redis_key(key, state), 0, cutoff, start=0, num=min(20, limit or 20)
        )
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
        set_key = self.redis_key(key, state)
        script_keys = [set_key, self.redis_key(key, "events"), self.redis_key(key, "repeat")]
        if state in FINISHED_STATES:
            found = int(await self.client.zcount(set_key, 0, cutoff))
            total = min(found, limit) if limit else found
        elif state in ZSET_STATES:
            total = int(await self.client.zcard(set_key))
        else:
            total = int(await self.client.llen(set_key))
        if on_progress:
            on_progress(self.queue_name(key), 0, total)
        first: list[str] = []
        removed, kept, cursor, score = 0, 0, "", ""
        while True:
            todo = 0 if limit is None else limit - removed
            args = [self.key_prefix(key), cutoff, todo, state, self.batch, kept, cursor, score, int(dry_run)]
            ids, done, kept, cursor, score = await self._clean(keys=script_keys, args=args)
            removed += len(ids)
            first.extend(ids[: 20 - len(first)])
            if on_progress:
                on_progress(self.queue_name(key), min(_looked_at(state, dry_run, removed, int(kept)), total), total)
            if int(done):
                return removed, first

    # --- retry / promote ----------------------------------------------------------------

    async def movable(self, keys: Iterable[QueueKey] | None, source: str, count: int | None) -> dict[str, int]:
        """How many jobs `retry` (source failed) or `promote` (delayed) would move, per queue."""
        wanted = self._keys(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in wanted:
            pipe.zcard(self.redis_key(key, source))
        sizes = await pipe.execute()
        return {self.queue_name(k): int(n) if count is None else min(int(n), count) for k, n in zip(wanted, sizes)}

    async def retry(self, keys: Iterable[QueueKey] | None = None, count: int | None = None) -> list[MoveResult]:
        """Failed -> wait (BullMQ's retryJobs: oldest failures first; attemptsMade is kept)."""
        check_count(count, "count")
        return [await self._move_to_wait(key, "failed", count, int(time.time() * 1000)) for key in self._keys(keys)]

    async def promote(self, keys: Iterable[QueueKey] | None = None, count: int | None = None) -> list[MoveResult]:
        """Delayed -> wait now (BullMQ's promoteJobs: soonest due first)."""
        check_count(count, "count")
        return [await self._move_to_wait(key, "delayed", count, 1.7976931348623157e308) for key in self._keys(keys)]

    async def _move_to_wait(self, key: QueueKey, source: str, count: int | None, upto: float) -> MoveResult:
        script_keys = [self.redis_key(key, n) for n in move_jobs_to_wait_keys(source)]
        moved = 0
        while count is None or moved < count:
            batch = BATCH if count is None else min(BATCH, count - moved)
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zcard(self.redis_key(key, source))
                await queue_script(pipe, self._move, script_keys, [batch, upto, source])
                pipe.zcard(self.redis_key(key, source))
                before, _, after = await pipe.execute()
            moved += int(before) - int(after)
            if int(before) - int(after) < batch:
                break
        left = int(await self.client.zcard(self.redis_key(key, source)))
        return MoveResult(self.queue_name(key), source, moved, left)

    # --- pause / resume -----------------------------------------------------------------

    async def set_paused(self, key: QueueKey, paused: bool) -> PauseResult:
        """BullMQ's pause/resume (pause-7.lua): meta flag, marker, `paused`/`resumed` event."""
        # paused as Node's isPaused reads it: the field exists, whatever its value
        was_paused = bool(await self.client.hexists(self.redis_key(key, "meta"), "paused"))
        script_keys = [self.redis_key(key, n) for n in pause_keys(paused)]
        for _ in range(10_000):  # resume moves legacy paused lists 7000 jobs per call
            remaining = await self._pause(keys=script_keys, args=["paused" if paused else "resumed", "1"])
            if not remaining:
                break
        return PauseResult(self.queue_name(key), paused, was_paused != paused)

    # --- jobs -----------------------------------------------------------------------

    async def list_jobs(self, key: QueueKey, status: str, limit: int = 20) -> list[JobInfo]:
        """Jobs of one state: next to run first (wait, prioritized, delayed), newest first (finished)."""
        state = normalize_state(status)
        check_count(limit, "limit")
        set_key = self.redis_key(key, state)
        if state in LIST_STATES:
            ids = list(reversed(await self.client.lrange(set_key, -limit, -1)))
            ids = [i for i in ids if not i.startswith("0:")]
        elif state in ("completed", "failed"):
            ids = list(await self.client.zrevrange(set_key, 0, limit - 1))
        else:
            ids = list(await self.client.zrange(set_key, 0, limit - 1))
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.redis_key(key, job_id))
        hashes = await pipe.execute() if ids else []
        return [
            job_info(self.queue_name(key), job_id, "waiting" if state == "wait" else state, raw)
            for job_id, raw in zip(ids, hashes)
            if raw
        ]

    async def job_state(self, key: QueueKey, job_id: str) -> str:
        script_keys = [self.redis_key(key, n) for n in GET_STATE_KEYS]
        return str(await self._state(keys=script_keys, args=[job_id, self.redis_key(key, job_id)]))

    async def show_job(self, key: QueueKey, job_id: str) -> JobInfo:
        """One job with data, options, attempts, failure, stack trace and logs."""
        check_job_id(job_id)
        job_id = await self._stored_id(key, job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.redis_key(key, job_id))
            pipe.lrange(self.redis_key(key, f"{job_id}:logs"), 0, -1)
            pipe.exists(self.redis_key(key, f"{job_id}:lock"))
            raw, logs, locked = await pipe.execute()
        if not raw:
            raise JobNotFound(f"no job {printable(job_id)!r} on {self.queue_name(key)}")
        info = job_info(self.queue_name(key), job_id, await self.job_state(key, job_id), raw)
        info.logs = [printable(str(line)) for line in logs]
        info.logs_count = len(logs)
        info.locked = bool(locked)
        return info


def _looked_at(state: str, dry_run: bool, removed: int, kept: int) -> int:
    """Jobs a clean has examined so far: finished sets look only at what they remove; a dry
    run keeps (counts as kept) every job it looks at."""
    if state in FINISHED_STATES:
        return removed
    return kept if dry_run else removed + kept
