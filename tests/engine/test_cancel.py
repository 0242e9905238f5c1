"""`cancel_waiting`, the one cancel loop of the producer and the ops commands: a waiting job
goes, a job a worker takes between the state check and the removal stays, as does any job
that has started; a missing one says so."""

from __future__ import annotations

import redis
from bullmq import Queue

from bullwait.engine.cancel import cancel_waiting
from bullwait.engine.connection import redis_client, redis_options
from bullwait.engine.internals import script_source
from bullwait.settings import Settings

QUEUE = "cancel-q"


async def test_cancels_only_what_has_not_started(settings: Settings, sync_redis: redis.Redis) -> None:
    queue = Queue(QUEUE, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
    client = redis_client(settings)
    remove = client.register_script(script_source("removeJob"))
    base = queue.keys[""]
    try:
        await queue.add("j", {}, {"jobId": "waiting"})
        await queue.add("j", {}, {"jobId": "later", "delay": 60_000})
        for job_id in ("waiting", "later"):
            assert await cancel_waiting(client, remove, base, job_id, lambda j=job_id: queue.getJobState(j)) == (
                "cancelled"
            )
            assert not sync_redis.exists(base + job_id)
        assert await cancel_waiting(client, remove, base, "gone", lambda: queue.getJobState("gone")) == "missing"

        await queue.add("j", {}, {"jobId": "taken"})
        reads: list[str] = []

        async def taken_after_the_first_read() -> str:
            state = str(await queue.getJobState("taken"))
            if not reads:  # a worker's moveToActive, between this read and the removal
                sync_redis.lrem(base + "wait", 0, "taken")
                sync_redis.lpush(base + "active", "taken")
                sync_redis.hset(base + "taken", "processedOn", "1")
            reads.append(state)
            return state

        assert await cancel_waiting(client, remove, base, "taken", taken_after_the_first_read) == "active"
        assert reads == ["waiting", "active"], "the state is read again after the removal was discarded"
        assert sync_redis.hget(base + "taken", "processedOn") == "1", "the taken job is left alone"
    finally:
        await client.aclose()
        await queue.close()
