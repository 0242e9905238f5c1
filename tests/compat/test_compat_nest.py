"""NestJS 11 + @nestjs/bullmq (the NestJS module's producers) <-> bullwait's Python workers and producer."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any

from bullwait.runtime.dispatch import Registry
from bullwait.runtime.runner import run_workers
from bullwait.settings import Settings
from bullwait.waitlist.catalog import Priority, QueueKey
from bullwait.waitlist.payloads import NotificationJob, PreferenceJob
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.jobdata import notification_data
from helpers.nodecompat import nest, node_required, seed_booking, seed_entry, seed_slot
from helpers.reliability import eventually

pytestmark = node_required


async def _state(producer: Producer, key: QueueKey, job_id: str, state: str) -> None:
    queue = producer.queue(key)
    await eventually(lambda: _is(queue, job_id, state), message=f"{job_id} {state}")


async def _is(queue: Any, job_id: str, state: str) -> bool:
    return (await queue.getJobState(job_id)) == state


def _raw(sync_redis: Any, prefix: str, queue: str, job_id: str) -> dict[str, Any]:
    raw = sync_redis.hgetall(f"{prefix}:{queue}:{job_id}")
    return {**raw, "data": json.loads(raw["data"]), "opts": json.loads(raw["opts"])}


async def test_nest_seed_jobs_are_processed_by_bullwait_worker(
    env, settings: Settings, start_worker, sync_redis, prefix
) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    entry, slot, booking = seed_entry("w-7"), seed_slot(), seed_booking()
    ids = nest(
        env,
        "batch",
        [
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": entry, "slot": slot, "delayMs": 400}},
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry, "slot": slot}},
            {"action": "calculatePreferencesAfterBooking", "args": {"customerId": "cust-1", "booking": booking}},
        ],
    )
    expiry_id, note_id, pref_id = (r["jobId"] for r in ids)
    assert expiry_id == "expiry_w-7"

    # What NestJS wrote: the NestJS module's data, the NestJS module's call-site options over the catalog defaults.
    exp = _raw(sync_redis, prefix, "waitlist-expiry", expiry_id)
    assert exp["name"] == "check-expiry" and exp["delay"] == "400"
    assert {k: exp["data"][k] for k in ("waitlistId", "slotId", "customerId", "salonId")} == {
        "waitlistId": "w-7",
        "slotId": "slot-1",
        "customerId": "cust-1",
        "salonId": "salon-1",
    }
    assert exp["opts"]["attempts"] == 3 and exp["opts"]["backoff"] == {"type": "exponential", "delay": 1000}
    assert exp["opts"]["removeOnComplete"] == {"count": 100, "age": 3600}
    note = _raw(sync_redis, prefix, "waitlist-notification", note_id)
    assert note["data"] == notification_data("w-7") and note["priority"] == "10"
    pref = _raw(sync_redis, prefix, "waitlist-preference-calculation", pref_id)
    # The NestJS module computes dayOfWeek with JS `new Date(booking.date).getDay()`.
    day = (datetime.date.fromisoformat(booking["date"]).weekday() + 1) % 7
    assert pref["data"]["data"] == {"serviceId": "service-1", "masterId": "master-1", "dayOfWeek": day, "hour": 10}
    assert pref["priority"] == "1", "the NestJS module's call-site priority wins over the catalog default"

    async with Producer(settings) as producer:
        for key, job_id in (
            (QueueKey.WAITLIST_EXPIRY, expiry_id),
            (QueueKey.WAITLIST_NOTIFICATION, note_id),
            (QueueKey.PREFERENCE_CALCULATION, pref_id),
        ):
            await _state(producer, key, job_id, "completed")
    assert worker.terminate() == 0
    log = worker.log()
    for job_id in (expiry_id, note_id, pref_id):
        assert job_id in log
    assert "Invalid job data" not in log


async def test_retries_backoff_priority_and_retention_follow_the_options(env, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """In-process Python workers (real bullmq-py) on jobs NestJS added with the NestJS module's options."""
    entry, slot = seed_entry, seed_slot()
    steps = [
        {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry(w), "slot": slot}}
        for w in ("w-a", "w-b", "w-flaky", "w-doomed")
    ]
    steps += [
        {
            "action": "calculatePreferencesAfterBooking",
            "args": {"customerId": f"c-{i}", "booking": seed_booking(f"b-{i}")},
        }
        for i in range(60)
    ]
    async with Producer(settings) as producer:
        # Queued while no worker runs: Python HIGH (no priority) and NORMAL (1) next to NestJS's 10s.
        high = await producer.send_slot_available(NotificationJob.model_validate(notification_data("w-high")))
        normal = await producer.send_slot_available(
            NotificationJob.model_validate(notification_data("w-normal")), Priority.NORMAL
        )
        ids = [r["jobId"] for r in nest(env, "batch", steps)]
        flaky, doomed = ids[2], ids[3]

        order: list[str] = []
        attempts: dict[str, list[float]] = {}
        preferences: list[str] = []
        registry = Registry()

        async def notify(payload: Any, ctx: Any) -> dict[str, Any]:
            order.append(ctx.job.id)
            attempts.setdefault(payload.waitlist_id, []).append(time.time() * 1000)
            if payload.waitlist_id == "w-doomed" or (payload.waitlist_id == "w-flaky" and ctx.job.attemptsMade < 2):
                raise RuntimeError(f"whatsapp down for {payload.waitlist_id}")
            return {"sent": payload.waitlist_id}

        async def prefs(payload: Any, ctx: Any) -> None:
            preferences.append(ctx.job.id)

        registry.register(QueueKey.WAITLIST_NOTIFICATION, "send-slot-available", NotificationJob, notify)
        registry.register(QueueKey.PREFERENCE_CALCULATION, "calculate-preferences", PreferenceJob, prefs)
        one_at_a_time = settings.with_overrides(waitlist_notification_concurrency=1)
        stop = asyncio.Event()
        run = asyncio.ensure_future(
            run_workers(
                one_at_a_time, registry, [QueueKey.WAITLIST_NOTIFICATION, QueueKey.PREFERENCE_CALCULATION], 5, stop=stop
            )
        )
        try:
            note_q = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
            pref_q = producer.queue(QueueKey.PREFERENCE_CALCULATION)
            await _state(producer, QueueKey.WAITLIST_NOTIFICATION, flaky, "completed")
            await _state(producer, QueueKey.WAITLIST_NOTIFICATION, doomed, "failed")
            await eventually(lambda: _done(pref_q, preferences, 60), message="60 preference jobs")
        finally:
            stop.set()
            await run

        # Priority: no priority first, then 1, then 10 in insertion order.
        assert order[:4] == [high, normal, ids[0], ids[1]]
        # Retries: 3 attempts as NestJS's options say; the flaky one succeeds on the third.
        flaky_job = await _job(note_q, flaky)
        doomed_job = await _job(note_q, doomed)
        assert flaky_job.attemptsMade == 3, flaky_job.attemptsMade  # two failures + the success
        assert len(attempts["w-flaky"]) == 3 and len(attempts["w-doomed"]) == 3
        assert doomed_job.attemptsMade == 3 and doomed_job.failedReason == "whatsapp down for w-doomed"
        # Backoff: exponential from 1 s, so a retry never starts before 1 s, then 2 s, after the failure.
        gaps = [b - a for a, b in zip(attempts["w-doomed"], attempts["w-doomed"][1:])]
        assert gaps[0] >= 1000 - 5 and gaps[1] >= 2000 - 5, gaps
        # Retention: the catalog keeps 50 completed preference jobs.
        assert await pref_q.getCompletedCount() == 50


async def _done(queue: Any, seen: list[str], n: int) -> bool:
    counts = await queue.getJobCounts("waiting", "active", "prioritized", "delayed")
    return len(seen) >= n and not any(counts.values())


async def _job(queue: Any, job_id: str) -> Any:
    from bullmq import Job

    return await Job.fromId(queue, job_id)


async def test_cancel_both_ways_and_stats(env, settings: Settings, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    async with Producer(settings) as producer:
        # NestJS schedules, bullwait cancels.
        nest(env, "notifyWaitlistCustomer", {"waitlistEntry": seed_entry("w-n"), "slot": seed_slot()})
        assert await producer.queue(QueueKey.WAITLIST_EXPIRY).getJobState("expiry_w-n") == "delayed"
        result = await producer.cancel_expiry_timer("w-n")
        assert result.cancelled, result
        assert not sync_redis.exists(f"{prefix}:waitlist-expiry:expiry_w-n")

        # bullwait schedules, NestJS's cancelExpiryTimer cancels.
        await producer.schedule_expiry(new_expiry("w-p", "slot-1", "cust-1", "salon-1"))
        await producer.schedule_expiry(new_expiry("w-q", "slot-1", "cust-1", "salon-1"))
        assert nest(env, "cancelExpiryTimer", {"waitlistId": "w-p"}) == {
            "jobId": "expiry_w-p",
            "cancelled": True,
            "state": "delayed",
        }
        assert nest(env, "cancelExpiryTimer", {"waitlistId": "w-p"})["state"] == "missing"
        assert not sync_redis.exists(f"{prefix}:waitlist-expiry:expiry_w-p")

        # The NestJS module's getQueueStats agrees with Python's counts.
        await producer.queue_preferences(
            PreferenceJob.model_validate(
                {
                    "customerId": "c",
                    "bookingId": "b",
                    "salonId": "s",
                    "action": "calculate",
                    "data": {"serviceId": "x", "masterId": "m", "dayOfWeek": 1, "hour": 9},
                }
            )
        )
        stats = {s["queue"]: s for s in nest(env, "getQueueStats")}
        for key in QueueKey:
            q = producer.queue(key)
            counts = await q.getJobCounts("waiting", "prioritized", "active", "completed", "failed", "delayed")
            node = stats[q.name]
            assert (node["delayed"], node["completed"], node["failed"], node["active"]) == (
                counts["delayed"],
                counts["completed"],
                counts["failed"],
                counts["active"],
            )
        assert stats["waitlist-expiry"]["delayed"] == 1
        # The NestJS module counts `waiting` with getWaitingCount (wait list only) and so misses prioritized jobs.
        assert stats["waitlist-preference-calculation"]["waiting"] == 0
