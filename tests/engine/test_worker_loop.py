"""BullwaitWorker's own run-loop changes against a real Redis: fetch-next and rate limits.

Completing a job fetches the next one in the same `moveToFinished` call (as Node does);
these tests hold it to the stock semantics: every job exactly once, each fetched job
locked and tracked, a dead worker's fetched job recovered as stalled, a graceful close
that drains without taking new jobs, and a worker `limiter` that is waited out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import redis
import redis.asyncio as aioredis
from bullmq import Queue

from bullwait.engine.connection import redis_options
from bullwait.engine.worker import BullwaitWorker
from bullwait.settings import Settings


class CountingWorker(BullwaitWorker):
    """Counts how often the stock path (`getNextJob` -> moveToActive) was taken."""

    stock_fetches = 0

    async def getNextJob(self, token: str):  # type: ignore[no-untyped-def]
        self.stock_fetches += 1
        return await super().getNextJob(token)


def _opts(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False, **extra}


async def _until(predicate, timeout: float = 20, message: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {message}")


async def test_every_job_exactly_once_with_fewer_round_trips(settings: Settings) -> None:
    queue = Queue("loop", _opts(settings))
    await queue.addBulk([{"name": "n", "data": {"i": i}} for i in range(300)])
    seen: Counter[str] = Counter()
    active_events: list[str] = []

    async def process(job: Any, token: str) -> int:
        seen[job.id] += 1
        await asyncio.sleep(0.001)
        return int(job.data["i"])

    worker = CountingWorker("loop", process, _opts(settings, concurrency=10))
    worker.on("active", lambda job, prev: active_events.append(job.id))
    task = asyncio.ensure_future(worker.run())
    try:
        await _until(lambda: _count(queue, "completed", 300), message="300 completed")
    finally:
        await worker.close()
        await task
    assert len(seen) == 300 and set(seen.values()) == {1}, "every job once"
    assert sorted(active_events) == sorted(seen), "an active event per job"
    assert worker.stock_fetches < 100, (
        f"most jobs came with moveToFinished, not {worker.stock_fetches} moveToActive calls"
    )
    job = await queue.getJob("150")
    assert job.returnvalue == 149 and job.attemptsMade == 1
    assert await queue.getJobCounts("active", "wait", "failed") == {"active": 0, "wait": 0, "failed": 0}
    await queue.close()


async def _count(queue: Queue, state: str, n: int) -> bool:
    return (await queue.getJobCounts(state))[state] >= n


async def test_fetched_job_is_locked_and_released(settings: Settings, sync_redis: redis.Redis) -> None:
    queue = Queue("locks", _opts(settings))
    await queue.addBulk([{"name": "n", "data": {}}, {"name": "n", "data": {}}])
    locks: dict[str, Any] = {}
    tracked: dict[str, bool] = {}

    worker = BullwaitWorker("locks", None, _opts(settings, concurrency=1))  # type: ignore[arg-type]

    async def process(job: Any, token: str) -> None:
        locks[job.id] = sync_redis.get(f"{settings.bullmq_prefix}:locks:{job.id}:lock")
        tracked[job.id] = any(j.id == job.id for j, _ in worker.jobs)
        return None

    worker.processor = process
    task = asyncio.ensure_future(worker.run())
    try:
        await _until(lambda: _count(queue, "completed", 2), message="2 completed")
    finally:
        await worker.close()
        await task
    assert set(locks) == {"1", "2"}
    assert all(token and token.startswith(worker.id) for token in locks.values()), locks
    assert tracked == {"1": True, "2": True}
    assert sync_redis.exists(f"{settings.bullmq_prefix}:locks:2:lock") == 0, "lock released on completion"
    await queue.close()


async def test_fetched_job_of_a_dead_worker_is_recovered_as_stalled(settings: Settings) -> None:
    queue = Queue("stall", _opts(settings))
    await queue.addBulk([{"name": "quick", "data": {}}, {"name": "hang", "data": {}}])
    started = asyncio.Event()
    forever = asyncio.Event()

    async def first(job: Any, token: str) -> None:
        if job.name == "hang":
            started.set()
            await forever.wait()

    a = CountingWorker("stall", first, _opts(settings, concurrency=1, lockDuration=1000, stalledInterval=60_000))
    task_a = asyncio.ensure_future(a.run())
    await asyncio.wait_for(started.wait(), 10)
    assert a.stock_fetches == 1, "the hanging job came with the first job's moveToFinished"
    await a.close(force=True)  # dies without completing or failing it
    await asyncio.gather(task_a, return_exceptions=True)

    done: list[str] = []

    async def second(job: Any, token: str) -> None:
        done.append(job.name)

    b = BullwaitWorker("stall", second, _opts(settings, concurrency=1, stalledInterval=300))
    stalled: list[str] = []
    b.on("stalled", lambda job_id, *_: stalled.append(job_id))
    task_b = asyncio.ensure_future(b.run())
    try:
        await _until(lambda: _count(queue, "completed", 2), timeout=20, message="hang recovered")
    finally:
        await b.close()
        await task_b
    assert done == ["hang"] and stalled == ["2"]
    await queue.close()


async def test_graceful_close_drains_without_taking_new_jobs(settings: Settings) -> None:
    queue = Queue("close", _opts(settings))
    await queue.addBulk([{"name": "n", "data": {}} for _ in range(200)])
    processed: list[str] = []

    async def process(job: Any, token: str) -> None:
        await asyncio.sleep(0.02)
        processed.append(job.id)

    worker = BullwaitWorker("close", process, _opts(settings, concurrency=5))
    task = asyncio.ensure_future(worker.run())
    await _until(lambda: _count(queue, "completed", 20), message="some completed")
    await worker.close()
    await task
    counts = await queue.getJobCounts("active", "wait", "completed")
    assert counts["active"] == 0, "no job left active by a graceful close"
    assert counts["completed"] == len(processed) == len(set(processed))
    assert counts["wait"] == 200 - len(processed) > 0
    await queue.close()


async def test_rate_limited_worker_keeps_going(settings: Settings, sync_redis: redis.Redis) -> None:
    queue = Queue("limited", _opts(settings))
    await queue.addBulk([{"name": "n", "data": {}} for _ in range(30)])
    limiter = f"{settings.bullmq_prefix}:limited:limiter"
    client = aioredis.Redis(**redis_options(settings), decode_responses=True)
    # At each start, BullMQ's count of jobs started in the current window and what is left of it.
    seen: list[tuple[str | None, int]] = []

    async def process(job: Any, token: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            count, left = await pipe.get(limiter).pttl(limiter).execute()
        seen.append((count, left))

    worker = BullwaitWorker("limited", process, _opts(settings, concurrency=4, limiter={"max": 10, "duration": 500}))
    task = asyncio.ensure_future(worker.run())
    try:
        await _until(lambda: _count(queue, "completed", 30), timeout=20, message="30 completed under the limiter")
    finally:
        await worker.close()
        await task
        await client.aclose()
    assert len(seen) == 30
    # Concurrency 4 under a limit of 10 per window: no window ever counted more than 10, so the
    # 30 jobs took three windows at least, and the worker went on after each limit was reached.
    live = [int(count) for count, left in seen if count is not None and left > 0]
    assert live and max(live) <= 10, seen
    await queue.close()


async def test_idle_worker_runs_a_timer_added_later_on_time(settings: Settings) -> None:
    """An idle wait longer than redis-py's default 5 s socket timeout must not break the loop."""
    runs: list[str] = []

    async def process(job: Any, token: str) -> None:
        runs.append(job.id)

    worker = BullwaitWorker("idle", process, _opts(settings, concurrency=2))
    timeout = worker.backend.blocking_connection.conn.connection_pool.connection_kwargs["socket_timeout"]
    assert timeout > 10, "above the longest BZPOPMIN (10 s)"
    task = asyncio.ensure_future(worker.run())
    queue = Queue("idle", _opts(settings))
    try:
        await asyncio.sleep(0.5)  # the worker is now blocked, idle
        await queue.add("t", {}, {"delay": 7000})  # due after a > 5 s wait
        await _until(lambda: _count(queue, "completed", 1), timeout=15, message="timer run")
    finally:
        await worker.close()
        await task
        await queue.close()
    # The wait outlived redis-py's default socket timeout without a single failed fetch (a
    # timeout would have been one, then a retry delay: the timer late, but run all the same).
    assert len(runs) == 1 and worker.last_failure == "", worker.last_failure
