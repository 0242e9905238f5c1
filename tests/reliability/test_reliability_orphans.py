"""A fetch whose reply was lost leaves no job behind in `active` (bullwait.engine.orphans).

redis-py sends a call again when its reply is lost; a fetch sent twice moves two jobs to
active, and the first one used to wait out its lock and the stalled check (a minute by
default) before anyone ran it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from bullmq import Queue

from bullwait.engine.connection import redis_options
from bullwait.engine.worker import BullwaitWorker
from bullwait.settings import Settings

QUEUE = "orphans-q"


def _worker(settings: Settings, processor: Any, **opts: Any) -> BullwaitWorker:
    return BullwaitWorker(
        QUEUE,
        processor,
        {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False, **opts},
    )


async def _noop(job: Any, token: str) -> str:
    return "ok"


async def test_sweep_gives_back_only_jobs_locked_by_its_dead_tokens(
    settings: Settings, sync_redis: redis.Redis
) -> None:
    prefix = settings.bullmq_prefix
    queue = Queue(QUEUE, {"connection": redis_options(settings), "prefix": prefix})
    worker = _worker(settings, _noop)
    other = _worker(settings, _noop)
    try:
        for name in ("lost", "live", "foreign"):
            await queue.add("job", {}, {"jobId": name})
        token = f"{worker.id}:1"  # bullmq-py may give one token to several fetches
        # Each fetch takes the oldest waiting job: `lost`, then `live`, then `foreign`.
        await worker.backend.moveToActive(token, worker.opts)  # its reply never reached the worker
        worker.orphans.fetch_started(token)
        await worker.backend.moveToActive(token, worker.opts)
        worker.orphans.fetch_ended(token, "live")  # a slot is working on this one
        await other.backend.moveToActive(f"{other.id}:1", other.opts)  # another worker's job

        assert await worker.orphans.sweep() == ["lost"]

        active = sync_redis.lrange(f"{prefix}:{QUEUE}:active", 0, -1)
        assert sorted(active) == ["foreign", "live"]
        assert sync_redis.lrange(f"{prefix}:{QUEUE}:wait", 0, -1) == ["lost"]
        assert sync_redis.exists(f"{prefix}:{QUEUE}:lost:lock") == 0
        assert sync_redis.hget(f"{prefix}:{QUEUE}:lost", "stc") in (None, "0")
        assert await worker.orphans.sweep() == []

        # The same job fetched again by this worker (it stalled) while its stale run goes on:
        # the stale run's end does not make the new holder's job an orphan.
        worker.orphans.fetch_started(token)
        worker.orphans.fetch_ended(token, "live")
        worker.orphans.released("live", token)
        assert await worker.orphans.sweep() == []
        worker.orphans.released("live", token)
        assert await worker.orphans.sweep() == ["live"]
    finally:
        await worker.close(force=True)
        await other.close(force=True)
        await queue.close()


async def test_jobs_being_processed_are_never_given_back(settings: Settings, sync_redis: redis.Redis) -> None:
    """Slots share tokens (bullmq-py hands concurrent fetches one token); none of their jobs is an orphan."""
    prefix = settings.bullmq_prefix
    queue = Queue(QUEUE, {"connection": redis_options(settings), "prefix": prefix})
    release = asyncio.Event()
    started: list[str] = []

    async def slow(job: Any, token: str) -> str:
        started.append(job.id)
        await release.wait()
        return "ok"

    worker = _worker(settings, slow, concurrency=10)
    try:
        for i in range(4):
            await queue.add("job", {}, {"jobId": f"s{i}"})
        run = asyncio.ensure_future(worker.run())
        deadline = time.monotonic() + 20
        while len(started) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(started) == [f"s{i}" for i in range(4)]
        assert await worker.orphans.sweep() == []
        release.set()
        while sync_redis.llen(f"{prefix}:{QUEUE}:active") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(started) == [f"s{i}" for i in range(4)], "a job ran twice"
    finally:
        release.set()
        await worker.close()
        await asyncio.gather(run, return_exceptions=True)
        await queue.close()


async def test_a_fetch_sent_twice_leaves_no_job_waiting_for_the_stalled_check(
    settings: Settings, sync_redis: redis.Redis
) -> None:
    """Every first fetch's reply is 'lost': the call runs again, as redis-py's retry does."""
    prefix = settings.bullmq_prefix
    queue = Queue(QUEUE, {"connection": redis_options(settings), "prefix": prefix})
    done: list[str] = []

    async def record(job: Any, token: str) -> str:
        done.append(job.id)
        return "ok"

    # Locks and the stalled check far beyond the deadline below: only the sweeper can
    # bring an orphan back in time.
    worker = _worker(settings, record, concurrency=2, lockDuration=60_000, stalledInterval=60_000)
    fetch = worker.backend.moveToActive
    lost = 0

    async def fetch_twice(token: str, opts: Any) -> Any:
        nonlocal lost
        first = await fetch(token, opts)
        if first and first[1] and lost < 3:
            lost += 1
            return await fetch(token, opts)  # the first reply is dropped
        return first

    worker.backend.moveToActive = fetch_twice  # type: ignore[method-assign]
    try:
        for i in range(6):
            await queue.add("job", {}, {"jobId": f"j{i}"})
        run = asyncio.ensure_future(worker.run())
        deadline = time.monotonic() + 40
        while len(set(done)) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert lost == 3
        assert sorted(set(done)) == [f"j{i}" for i in range(6)], f"ran {sorted(done)}; active: " + str(
            sync_redis.lrange(f"{prefix}:{QUEUE}:active", 0, -1)
        )
        assert sorted(done) == sorted(set(done)), "a job ran twice"
        assert worker.orphans.returned == 3
        for i in range(6):
            assert sync_redis.hget(f"{prefix}:{QUEUE}:j{i}", "stc") in (None, "0")
    finally:
        await worker.close()
        await asyncio.gather(run, return_exceptions=True)
        await queue.close()
