"""Soak: jobs across the three queues while workers are restarted at random (SIGTERM and
SIGKILL). At the end every job is completed or deliberately failed, and the counts add up
exactly. CI runs 3,000 jobs; BULLWAIT_SLOW=1 runs 100,000 (marker `slow`)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

import pytest
import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.reliability import FAST_RECOVERY, add_counted, counts
from helpers.reliability_processors import counter_field, keys

SLOW = os.environ.get("BULLWAIT_SLOW") == "1"
BAD_EVERY = 97  # about 1% of the jobs carry invalid data: they must fail once, deliberately


async def _soak(
    settings: Settings,
    start_worker: Any,
    sync_redis: redis.Redis,
    prefix: str,
    jobs: int,
    workers: int,
    restarts: int,
    pause: tuple[float, float],
    deadline_s: float,
    seed: int,
) -> None:
    """Add the jobs in `restarts + 1` slices; after each slice restart a random worker while
    the slice is being processed (alternately SIGTERM and SIGKILL), then wait a random
    `pause`. The number of restarts does not depend on the machine's speed."""
    rng = random.Random(seed)
    worker_env = {
        **FAST_RECOVERY,
        "QUEUE_LOG_LEVEL": "info",
        "BULLWAIT_MAX_STALLED_COUNT": "1000",  # a job may be caught by several SIGKILLs
        "BULLWAIT_SHUTDOWN_TIMEOUT": "10",
        "WAITLIST_EXPIRY_CONCURRENCY": "20",
        "WAITLIST_NOTIFICATION_CONCURRENCY": "20",
        "PREFERENCE_CALCULATION_CONCURRENCY": "20",
    }
    running = [start_worker(extra_env=worker_env, ready=False) for _ in range(workers)]
    terminated: list[Any] = []
    kills = terms = 0
    added: dict[QueueKey, set[str]] = {k: set() for k in QueueKey}
    bad: dict[QueueKey, set[str]] = {k: set() for k in QueueKey}
    started = time.monotonic()

    def ready(worker: Any) -> bool:
        return worker.log().count("worker started") >= 3

    async with Producer(settings) as producer:

        async def add_range(first: int, last: int) -> None:
            for start in range(first, last, 200):
                stop = min(start + 200, last)
                results = await asyncio.gather(
                    *(
                        add_counted(producer, i, sleep_ms=rng.choice((0, 1, 3)), bad=(i % BAD_EVERY == 0))
                        for i in range(start, stop)
                    )
                )
                for i, (key, job_id) in zip(range(start, stop), results):
                    added[key].add(job_id)
                    if i % BAD_EVERY == 0:
                        bad[key].add(job_id)

        async def finished() -> int:
            total = 0
            for key in QueueKey:
                c = await counts(producer, key)
                total += c["completed"] + c["failed"]
            return total

        bounds = [jobs * n // (restarts + 1) for n in range(restarts + 2)]
        for n in range(restarts + 1):
            await add_range(bounds[n], bounds[n + 1])
            if n == restarts:
                break
            if n % 2 == 0:  # SIGTERM a worker that is up (before its handlers exist, SIGTERM just ends it)
                while not any(ready(w) for w in running):
                    assert time.monotonic() - started < deadline_s, "no worker came up"
                    await asyncio.sleep(0.05)
                victim = rng.choice([w for w in running if ready(w)])
                running.remove(victim)
                victim.proc.send_signal(signal.SIGTERM)
                terminated.append(victim)
                terms += 1
            else:
                victim = running.pop(rng.randrange(len(running)))
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                kills += 1
            running.append(start_worker(extra_env=worker_env, ready=False))
            await asyncio.sleep(rng.uniform(*pause))

        while (done := await finished()) < jobs:
            assert time.monotonic() - started < deadline_s, f"soak not finished in {deadline_s}s: {done}/{jobs}"
            await asyncio.sleep(0.1)

        final = {key: await counts(producer, key) for key in QueueKey}

    for key in QueueKey:
        c = final[key]
        assert c["completed"] == len(added[key]) - len(bad[key]), (key, c, len(added[key]), len(bad[key]))
        assert c["failed"] == len(bad[key]), (key, c)
        assert c["active"] == c["waiting"] == c["delayed"] == c["prioritized"] == 0, (key, c)
    assert sum(len(v) for v in added.values()) == jobs

    effects = sync_redis.hgetall(keys(prefix)["effects"])
    for key in QueueKey:
        good = added[key] - bad[key]
        assert all(int(effects.get(counter_field(key, j), 0)) >= 1 for j in good), key
        assert not any(counter_field(key, j) in effects for j in bad[key]), "bad data never reached a processor"
        for job_id in list(bad[key])[:20]:
            reason = sync_redis.hget(f"{prefix}:{settings_queue(key)}:{job_id}", "failedReason") or ""
            assert reason.startswith("Invalid job data:") and "salonId" in reason, reason
    # BullMQ runs a job at least once: only a SIGKILL between a processor's end and the
    # completion write can run it twice. A worker stopped with SIGTERM never duplicates.
    duplicates = sum(int(v) - 1 for v in effects.values())
    print(f"soak: {jobs} jobs, {kills} SIGKILL, {terms} SIGTERM, {duplicates} re-run after SIGKILL")
    assert (kills, terms) == (restarts // 2, restarts - restarts // 2)
    if kills == 0:
        assert duplicates == 0
    for worker in terminated:
        assert worker.proc.wait(timeout=30) == 0, worker.log()[-2000:]
    for worker in running:
        assert worker.terminate(timeout=30) == 0, worker.log()[-2000:]


def settings_queue(key: QueueKey) -> str:
    from bullwait.waitlist.catalog import QUEUE_NAMES

    return QUEUE_NAMES[key]


async def test_soak_with_random_worker_restarts(
    settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    await _soak(
        settings,
        start_worker,
        sync_redis,
        prefix,
        jobs=3_000,
        workers=2,
        restarts=6,
        pause=(0.0, 0.3),
        deadline_s=120,
        seed=8,
    )


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long soak: set BULLWAIT_SLOW=1")
async def test_soak_100k_jobs(settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str) -> None:
    await _soak(
        settings,
        start_worker,
        sync_redis,
        prefix,
        jobs=100_000,
        workers=2,
        restarts=200,
        pause=(1.0, 5.0),
        deadline_s=3600,
        seed=100,
    )
