"""A job in `wait` whose wake-up marker is gone (its BZPOPMIN answer was lost, e.g. with a
restarting Redis) is still fetched by an idle worker at the end of its next blocking wait.

Regression: redis-py 8's 5 s read timeout equalled bullmq's 5 s idle wait; the timed-out
wait was retried as another wait, never followed by a fetch, so such a job sat in `wait`
for minutes (found by test_reliability_redis_restart.py)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.jobdata import notification_data
from helpers.reliability import COUNTING, eventually


async def test_job_without_marker_is_fetched(
    settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    worker = start_worker("-q", "waitlist-notification", extra_env=COUNTING)
    time.sleep(1.0)  # let it go idle on its blocking wait
    base = f"{prefix}:waitlist-notification"
    job_id = str(uuid.uuid4())
    # What a job in `wait` looks like once its marker was consumed by an answer nobody got.
    sync_redis.hset(
        f"{base}:{job_id}",
        mapping={
            "name": "send-slot-available",
            "data": json.dumps(notification_data("lost-marker")),
            "opts": json.dumps({"attempts": 1}),
            "timestamp": str(int(time.time() * 1000)),
            "delay": "0",
            "priority": "0",
        },
    )
    sync_redis.lpush(f"{base}:wait", job_id)
    assert sync_redis.zcard(f"{base}:marker") == 0
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)

        async def completed() -> bool:
            return await queue.getJobState(job_id) == "completed"

        await eventually(completed, timeout=40, message="the marker-less job fetched after an idle wait")
    assert worker.terminate() == 0
