"""Producer API against a real Redis: idempotent timers, cancel in every state, priority order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bullwait.runtime.dispatch import Registry
from bullwait.runtime.runner import run_workers
from bullwait.settings import Settings
from bullwait.waitlist.catalog import Priority, QueueKey
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob
from bullwait.waitlist.producer import Producer, expiry_job_id

from helpers.jobdata import expiry_data, notification_data, preference_data


async def test_expiry_timer_options_and_idempotency(settings: Settings) -> None:
    async with Producer(settings) as producer:
        payload = ExpiryJob.model_validate(expiry_data("w-1"))
        first = await producer.schedule_expiry(payload)
        second = await producer.schedule_expiry(payload)
        assert first == second == "expiry_w-1"
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        assert await queue.getDelayedCount() == 1
        job = await queue.getJob("expiry_w-1")
        assert job.name == "check-expiry"
        assert job.data["waitlistId"] == "w-1" and job.data["expiresAt"].endswith("Z")
        assert 14 * 60_000 < job.delay <= 15 * 60_000
        assert job.opts["attempts"] == 3
        assert job.opts["backoff"] == {"type": "exponential", "delay": 1000}


async def test_stored_opts_keep_every_option_and_no_redundant_copies(
    settings: Settings, sync_redis: Any, prefix: str
) -> None:
    """The job hash's `opts` JSON holds what workers read (attempts, backoff, retention,
    delay, priority) and not what BullMQ keeps elsewhere: the job id (the key's name) and
    bullmq-py's `"delay":0` default. Both runtimes read the job back with the same id."""
    async with Producer(settings) as producer:
        await producer.schedule_expiry(ExpiryJob.model_validate(expiry_data("w-opts")), delay_ms=60_000)
        note_id = await producer.send_slot_available(
            NotificationJob.model_validate(notification_data("w-opts")), Priority.NORMAL, job_id="note-w-opts"
        )
        job = await producer.queue(QueueKey.WAITLIST_EXPIRY).getJob("expiry_w-opts")
        assert job.id == "expiry_w-opts"
    expiry = sync_redis.hgetall(f"{prefix}:waitlist-expiry:expiry_w-opts")
    assert json.loads(expiry["opts"]) == {
        "attempts": 3,
        "backoff": {"type": "exponential", "delay": 1000},
        "removeOnComplete": {"count": 100, "age": 3600},
        "removeOnFail": {"count": 1000, "age": 604800},
        "delay": 60_000,
    }
    assert expiry["delay"] == "60000"
    note = sync_redis.hgetall(f"{prefix}:waitlist-notification:{note_id}")
    note_opts = json.loads(note["opts"])
    assert "jobId" not in note_opts and "delay" not in note_opts, note_opts
    assert note_opts["priority"] == 1 and note_opts["attempts"] == 3 and note["delay"] == "0"


async def _state_job(producer: Producer, settings: Settings, state: str) -> str:
    """Put `expiry_<state>` into the given state using real bullmq operations."""
    payload = ExpiryJob.model_validate(expiry_data(state))
    queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
    if state == "delayed":
        await producer.schedule_expiry(payload)
    elif state == "waiting":
        await producer.schedule_expiry(payload, delay_ms=0)
    elif state in ("active", "completed", "failed"):
        await producer.schedule_expiry(payload, delay_ms=0)
        from bullmq import Worker

        token = "test-token"
        worker = Worker(queue.name, None, {"connection": _conn(settings), "prefix": settings.bullmq_prefix})
        job = await worker.getNextJob(token)
        assert job is not None and job.id == expiry_job_id(state)
        if state == "completed":
            await job.moveToCompleted("done", token)
        elif state == "failed":
            job.opts["attempts"] = 1
            await job.moveToFailed(Exception("boom"), token)
        worker.closing = True
        if state != "active":
            await worker.close()
        else:  # leave it active: drop the worker's connections without releasing the lock
            await worker.backend.blocking_connection.close()
            await worker.backend.connection.close()
    return expiry_job_id(state)


def _conn(settings: Settings) -> dict[str, Any]:
    from bullwait.engine.connection import redis_options

    return redis_options(settings)


async def test_cancel_in_every_state(settings: Settings) -> None:
    async with Producer(settings) as producer:
        # Finished and active ones first: a worker takes whatever is waiting.
        expected = {
            "active": "active",
            "completed": "completed",
            "failed": "failed",
            "waiting": "cancelled",
            "delayed": "cancelled",
        }
        for state in expected:
            await _state_job(producer, settings, state)
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        for state, outcome in expected.items():
            result = await producer.cancel_expiry_timer(state)
            assert result.outcome == outcome, (state, result)
            remaining = await queue.getJobState(expiry_job_id(state))
            assert (remaining == "unknown") == (outcome == "cancelled")
        missing = await producer.cancel_expiry_timer("nobody")
        assert missing.outcome == "missing" and not missing.cancelled
        assert (await producer.cancel_expiry_timer("active")).outcome == "active"


async def test_priority_high_runs_before_low(settings: Settings) -> None:
    order: list[str] = []
    registry = Registry()

    async def record(payload: PreferenceJob, ctx: Any) -> None:
        order.append(payload.booking_id or "")

    registry.register(QueueKey.PREFERENCE_CALCULATION, "calculate-preferences", PreferenceJob, record)
    async with Producer(settings) as producer:
        for i in range(3):
            await producer.queue_preferences(PreferenceJob.model_validate(preference_data(f"low-{i}")), Priority.LOW)
        await producer.queue_preferences(PreferenceJob.model_validate(preference_data("normal-0")), Priority.NORMAL)
        await producer.queue_preferences(PreferenceJob.model_validate(preference_data("high-0")), Priority.HIGH)
        one = settings.with_overrides(preference_calculation_concurrency=1)
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_workers(one, registry, [QueueKey.PREFERENCE_CALCULATION], stop=stop))
        for _ in range(200):
            if len(order) == 5:
                break
            await asyncio.sleep(0.05)
        stop.set()
        assert await task == 0
    assert order == ["high-0", "normal-0", "low-0", "low-1", "low-2"]


async def test_notification_wire_format(settings: Settings) -> None:
    async with Producer(settings) as producer:
        job_id = await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
        job = await producer.queue(QueueKey.WAITLIST_NOTIFICATION).getJob(job_id)
        assert job.data == notification_data()
        assert "priority" not in job.opts or job.opts["priority"] == 0
        assert job.opts["removeOnComplete"] == {"count": 200, "age": 86400}


async def test_custom_ids_node_refuses_are_refused(settings: Settings) -> None:
    import pytest

    from bullwait.errors import BadArgument

    async with Producer(settings) as producer:
        payload = PreferenceJob.model_validate(preference_data("b-id"))
        for bad in ("17", "a:b"):
            with pytest.raises(BadArgument):
                await producer.add(QueueKey.PREFERENCE_CALCULATION, payload, job_id=bad)
        assert await producer.add(QueueKey.PREFERENCE_CALCULATION, payload, job_id="pref_17") == "pref_17"
