"""SIGTERM to a worker whose job outlasts BULLWAIT_SHUTDOWN_TIMEOUT: the worker gives up on
the job (it is not finished, not failed, not lost), exits 0, and another worker runs it to the
end once its lock has expired."""

from __future__ import annotations

from typing import Any

import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer

from helpers.common import wait_until
from helpers.jobdata import notification_data
from helpers.reliability import FAST_RECOVERY, counts, eventually
from helpers.reliability_processors import counter_field, keys


async def test_a_job_outlasting_the_shutdown_timeout_is_left_to_stalled_recovery(
    settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    env = dict(FAST_RECOVERY, BULLWAIT_SHUTDOWN_TIMEOUT="1")
    first = start_worker("-q", "waitlist-notification", extra_env=env)
    names = keys(prefix)
    async with Producer(settings) as producer:
        job_id = await producer.send_slot_available(
            NotificationJob.model_validate(dict(notification_data("slow"), sleepMs=60_000))
        )
        field = counter_field(QueueKey.WAITLIST_NOTIFICATION, job_id)
        wait_until(lambda: sync_redis.hget(names["starts"], field) == "1", message="the slow job started")
        assert first.terminate(timeout=60) == 0
        assert "shutdown timeout reached" in first.log()
        assert sync_redis.hget(names["effects"], field) is None, "the job was given up, not finished"
        left = await counts(producer, QueueKey.WAITLIST_NOTIFICATION)
        assert left["completed"] == left["failed"] == 0, left

        # The job comes back through stalled recovery; this time it runs quickly.
        sync_redis.hset(f"{prefix}:waitlist-notification:{job_id}", "data", _fast(sync_redis, prefix, job_id))
        second = start_worker("-q", "waitlist-notification", extra_env=FAST_RECOVERY)

        async def completed() -> bool:
            return (await counts(producer, QueueKey.WAITLIST_NOTIFICATION))["completed"] == 1

        await eventually(completed, timeout=30, message="the job completed by the second worker")
        assert sync_redis.hget(names["effects"], field) == "1"
        assert second.terminate() == 0


def _fast(sync_redis: redis.Redis, prefix: str, job_id: str) -> str:
    import json

    data = json.loads(sync_redis.hget(f"{prefix}:waitlist-notification:{job_id}", "data"))
    data["sleepMs"] = 0
    return json.dumps(data)
