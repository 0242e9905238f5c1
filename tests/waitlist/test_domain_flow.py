"""The waitlist end to end: `bullwait worker` as a subprocess, the local fake Cloud API,
and the producer side (`Waitlist`) in the test process, all on the suite's real Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.offers import notification_job_id
from bullwait.waitlist.payloads import NotificationJob, PreferenceJob
from bullwait.waitlist.producer import expiry_job_id

from helpers.cli import invoke_cli
from helpers.common import job_events, run_cli
from helpers.jobdata import API_TOKEN, SLOT_DETAILS, notification_data, preference_data
from helpers.reliability import eventually
from helpers.sends import max_in_window


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The application side: producer and waitlist, in the test process."""
    svc = await build_services(settings.with_overrides(waitlist_offer_minutes=1.5 / 60))  # offers made here: 1.5 s
    yield svc
    await svc.close()


async def job_in(services: Services, key: QueueKey, job_id: str, *states: str, timeout: float = 30) -> Any:
    queue = services.producer.queue(key)

    async def reached() -> bool:
        return await queue.getJobState(job_id) in states

    await eventually(reached, timeout, f"job {job_id} in {states}")
    return await queue.getJob(job_id)


def to_numbers(api: FakeWhatsApp) -> list[str]:
    return [r.body["to"] for r in api.received()]


async def test_freed_slot_expires_cascades_and_booking_cancels_timer(
    services: Services, api: FakeWhatsApp, start_worker
) -> None:  # type: ignore[no-untyped-def]
    # Offers the worker makes (the cascade) last 60 s, so B's timer is still pending when B books.
    worker = start_worker(extra_env={**api.env(token=API_TOKEN), "WAITLIST_OFFER_MINUTES": "1"})
    wl = services.waitlist
    for i, who in enumerate(("A", "B", "C")):
        await wl.join("salon-1", who, f"cust-{who}", f"+3460000000{i}")
    freed, offer = await wl.free_slot("salon-1", "slot-1", SLOT_DETAILS)
    assert freed.next_id == "A" and offer is not None

    a_timer = await job_in(services, QueueKey.WAITLIST_EXPIRY, expiry_job_id("A"), "completed")
    assert a_timer.returnvalue == {"outcome": "expired", "waitlistId": "A", "slotId": "slot-1", "nextOffered": "B"}
    assert (await wl.store.get_entry("salon-1", "A")).state == "expired"
    b = await wl.store.get_entry("salon-1", "B")
    assert b is not None and (b.state, b.slot_id) == ("notified", "slot-1")
    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    assert await expiry.getJobState(expiry_job_id("B")) == "delayed", "B's own timer is scheduled"
    note_b = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, notification_job_id("B", "slot-1"), "completed")
    assert note_b.returnvalue["outcome"] == "sent"
    assert to_numbers(api) == ["34600000000", "34600000001"]

    booked = await wl.book("salon-1", "B")
    assert booked.outcome == "booked"
    assert await expiry.getJobState(expiry_job_id("B")) == "unknown", "booking cancels B's timer"
    assert (await wl.store.get_entry("salon-1", "C")).state == "waiting"
    assert worker.terminate() == 0
    assert API_TOKEN not in worker.log()


async def test_retried_timer_finishes_a_hand_over_a_crash_interrupted(
    services: Services, api: FakeWhatsApp, start_worker
) -> None:  # type: ignore[no-untyped-def]
    wl = services.waitlist
    await wl.join("salon-c", "A", "cust-A", "+34600000000")
    await wl.join("salon-c", "B", "cust-B", "+34600000001")
    _, offer = await wl.free_slot("salon-c", "slot-1", SLOT_DETAILS)
    assert offer is not None
    # A timer run expired A and passed the slot to B in the store, then died before
    # enqueuing B's notification and timer.
    crashed = await wl.store.expire("salon-c", "A", "slot-1", offer.expires_at_ms, offer.expires_at_ms + 60_000)
    assert (crashed.outcome, crashed.next_id) == ("expired", "B")
    start_worker("-q", "waitlist-expiry", "-q", "waitlist-notification", extra_env=api.env())
    retried = await job_in(services, QueueKey.WAITLIST_EXPIRY, expiry_job_id("A"), "completed", "failed")
    assert retried.returnvalue["outcome"] == "already-expired" and retried.returnvalue["nextOffered"] == "B"
    await job_in(services, QueueKey.WAITLIST_NOTIFICATION, notification_job_id("B", "slot-1"), "completed")
    assert await services.producer.queue(QueueKey.WAITLIST_EXPIRY).getJobState(expiry_job_id("B")) == "delayed"
    assert to_numbers(api) == ["34600000001"]


async def test_early_timer_sleeps_until_expires_at(
    services: Services, api: FakeWhatsApp, start_worker, sync_redis, prefix
) -> None:  # type: ignore[no-untyped-def]
    start_worker("-q", "waitlist-expiry", extra_env={**api.env()})
    wl = services.waitlist
    await wl.join("salon-1", "A", "cust-A", "+34600000000")
    _, offer = await wl.free_slot("salon-1", "slot-1", SLOT_DETAILS)
    assert offer is not None
    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    job = await expiry.getJob(expiry_job_id("A"))
    await job.promote()  # the timer fires long before expiresAt (a skewed clock)
    done = await job_in(services, QueueKey.WAITLIST_EXPIRY, expiry_job_id("A"), "completed", "failed")
    assert done.returnvalue["outcome"] == "expired"
    # Never processed before expiresAt: the early run put it back in delayed until then, and the
    # run that expired the offer came out of that wait.
    events = job_events(sync_redis, prefix, expiry.name, expiry_job_id("A"))
    assert [e["event"] for e in events[-4:]] == ["delayed", "waiting", "active", "completed"], events
    assert int(events[-4]["delay"]) == offer.expires_at_ms, events
    assert done.attemptsMade == 1, "completion counts one attempt; the early run used none"


async def test_per_salon_limit_delays_without_failing(services: Services, api: FakeWhatsApp, start_worker) -> None:  # type: ignore[no-untyped-def]
    window = 3.0
    worker = start_worker(
        "-q",
        "waitlist-notification",
        extra_env={
            **api.env(),
            "WAITLIST_NOTIFICATION_RATE_LIMIT": "10",
            "WAITLIST_NOTIFICATION_RATE_WINDOW_MS": "3000",
        },
    )
    ids = []
    for i in range(25):
        payload = NotificationJob.model_validate(
            notification_data(f"w-{i}", salon_id="busy-salon", phone=f"+3460000{i:04d}")
        )
        ids.append(await services.producer.send_slot_available(payload))
    jobs = [await job_in(services, QueueKey.WAITLIST_NOTIFICATION, j, "completed", "failed", timeout=60) for j in ids]
    assert [j.returnvalue["outcome"] for j in jobs] == ["sent"] * 25, "none failed"
    assert all(j.attemptsMade <= 1 for j in jobs) and not any(j.failedReason for j in jobs)
    times = sorted(r.at for r in api.received())
    assert len(times) == 25 and len(api.sent()) == 25
    # Never more than 10 sends in any window (so 25 took three). The fake stamps a request when
    # it arrives, after the limiter admitted it: allow 1 s for that hop on a loaded machine.
    assert max_in_window(times, window - 1.0) <= 10, times
    assert worker.log().count("salon rate limit reached, delaying") >= 1


async def test_sigkill_mid_send_never_sends_twice(
    services: Services, api: FakeWhatsApp, start_worker, sync_redis, prefix
) -> None:  # type: ignore[no-untyped-def]
    api.latency = 1.5  # the fake records the request, then holds the answer
    extra = {**api.env(), "WHATSAPP_TIMEOUT_SECONDS": "2"}
    first = start_worker("-q", "waitlist-notification", extra_env=extra)
    payload = NotificationJob.model_validate(notification_data("w-kill", salon_id="salon-k"))
    job_id = await services.producer.send_slot_available(payload)
    await eventually(lambda: len(api.received()) == 1, message="the fake API got the request")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    slot = payload.slot_details
    record_key = services.send_records.key("salon-k", "w-kill", f"{slot.date}T{slot.time}/master-1/service-1")
    assert sync_redis.hget(record_key, "state") == "sending"

    # Its lock would expire after lockDuration (30 s); expire it now, then run BullMQ's own
    # stalled-jobs check twice (mark, then move), as a live worker's timer would.
    sync_redis.delete(f"{prefix}:waitlist-notification:{job_id}:lock")
    queue = services.producer.queue(QueueKey.WAITLIST_NOTIFICATION)
    for _ in range(2):
        await queue.backend.moveStalledJobsToWait(1, 1)
        await asyncio.sleep(0.01)
    assert await queue.getJobState(job_id) == "waiting"

    second = start_worker("-q", "waitlist-notification", extra_env=extra)
    job = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, job_id, "completed", "failed")
    assert len(api.received()) == 1, "the message is not sent a second time"
    assert job.failedReason.startswith("Send outcome unknown")
    assert second.terminate() == 0


async def test_rerun_after_lost_completion_and_duplicate_enqueue_send_once(
    services: Services, api: FakeWhatsApp, start_worker
) -> None:  # type: ignore[no-untyped-def]
    api.latency = 0.3
    # A 1 s HTTP timeout makes a claim last 3 s: the duplicate waits that long, then looks again.
    start_worker("-q", "waitlist-notification", extra_env={**api.env(), "WHATSAPP_TIMEOUT_SECONDS": "1"})
    payload = NotificationJob.model_validate(notification_data("w-dup", salon_id="salon-d"))
    # The same notification enqueued twice, both running at once.
    one = await services.producer.send_slot_available(payload)
    two = await services.producer.send_slot_available(payload)
    a = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, one, "completed", "failed")
    b = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, two, "completed", "failed")
    assert sorted([a.returnvalue["outcome"], b.returnvalue["outcome"]]) == ["already-sent", "sent"]
    assert a.returnvalue["wamid"] == b.returnvalue["wamid"]
    # The run that sent it runs again, as after a kill between the recorded send and the
    # job's completion: it finds the record and sends nothing.
    sender_job, first_result = (
        (a, dict(a.returnvalue)) if a.returnvalue["outcome"] == "sent" else (b, dict(b.returnvalue))
    )
    await sender_job.retry("completed")
    again = await eventually(lambda: _finished_again(services, sender_job.id), message="re-run")
    assert again.returnvalue == {**first_result, "outcome": "already-sent"}
    assert len(api.received()) == 1


async def _finished_again(services: Services, job_id: str) -> Any:
    job = await services.producer.queue(QueueKey.WAITLIST_NOTIFICATION).getJob(job_id)
    return job if job.returnvalue and job.returnvalue.get("outcome") == "already-sent" else None


async def test_throttling_backs_off_without_using_attempts(services: Services, api: FakeWhatsApp, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("-q", "waitlist-notification", extra_env=api.env(token=API_TOKEN))
    api.fail_next(status=429, retry_after=0.1)
    api.fail_next(code=130429, retry_after=0.1)
    api.fail_next(code=131056, retry_after=0.1)
    api.fail_next(code=130429, retry_after=0.1)
    payload = NotificationJob.model_validate(notification_data("w-thr", salon_id="salon-t"))
    job_id = await services.producer.send_slot_available(payload)  # 3 attempts
    job = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, job_id, "completed", "failed")
    assert job.returnvalue["outcome"] == "sent", job.failedReason
    assert job.attemptsMade <= 1 and not job.failedReason, "four throttles used none of the 3 attempts"
    assert [r.answered for r in api.received()] == [429, 429, 400, 429, 200]
    assert worker.log().count("whatsapp throttled, backing off") == 4
    assert API_TOKEN not in worker.log()


async def test_rejected_fails_at_once_and_server_errors_retry(
    services: Services, api: FakeWhatsApp, start_worker
) -> None:  # type: ignore[no-untyped-def]
    start_worker("-q", "waitlist-notification", extra_env=api.env())
    api.fail_next(code=131026)
    bad = NotificationJob.model_validate(notification_data("w-bad", salon_id="salon-r"))
    bad_id = await services.producer.send_slot_available(bad)
    failed = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, bad_id, "completed", "failed")
    assert (
        failed.attemptsMade == 1 and "131026" in failed.failedReason and "Message undeliverable" in failed.failedReason
    )

    api.fail_next(status=503)
    flaky = NotificationJob.model_validate(notification_data("w-flaky", salon_id="salon-r"))
    flaky_id = await services.producer.send_slot_available(flaky)
    done = await job_in(services, QueueKey.WAITLIST_NOTIFICATION, flaky_id, "completed", "failed")
    assert done.returnvalue["outcome"] == "sent" and done.attemptsMade >= 1, "a 503 is retried with backoff"
    assert [r.answered for r in api.received()] == [400, 503, 200]


async def test_skips_offer_no_longer_open(services: Services, api: FakeWhatsApp, start_worker) -> None:  # type: ignore[no-untyped-def]
    wl = services.waitlist
    await wl.join("salon-s", "A", "cust-A", "+34600000000")
    await wl.free_slot("salon-s", "slot-1", SLOT_DETAILS)
    await wl.cancel("salon-s", "A")  # declined before the notification went out
    start_worker("-q", "waitlist-notification", extra_env=api.env())
    job = await job_in(
        services, QueueKey.WAITLIST_NOTIFICATION, notification_job_id("A", "slot-1"), "completed", "failed"
    )
    assert job.returnvalue["outcome"] == "skipped-cancelled"
    assert api.received() == []


async def test_preferences_fold_once_and_cli(services: Services, start_worker, env) -> None:  # type: ignore[no-untyped-def]
    start_worker("-q", "waitlist-preference-calculation")
    producer = services.producer
    first = await producer.queue_preferences(PreferenceJob.model_validate(preference_data("b-1", "cust-9")))
    twice = await producer.queue_preferences(PreferenceJob.model_validate(preference_data("b-1", "cust-9")))
    other = dict(
        preference_data("b-2", "cust-9"), data={"serviceId": "s-2", "masterId": "master-1", "dayOfWeek": 5, "hour": 18}
    )
    third = await producer.queue_preferences(PreferenceJob.model_validate(other))
    results = [
        await job_in(services, QueueKey.PREFERENCE_CALCULATION, j, "completed", "failed") for j in (first, twice, third)
    ]
    outcomes = [r.returnvalue["outcome"] for r in results]
    # The same booking twice (two jobs, possibly running at once): one folds it.
    assert sorted(outcomes[:2]) == ["already-folded", "folded"] and outcomes[2] == "folded"
    prefs = await services.store.preferences("cust-9")
    assert prefs.bookings == 2 and prefs.masters == {"master-1": 2}
    recalc = await producer.queue_preferences(
        PreferenceJob(customer_id="cust-9", salon_id="salon-1", action="recalculate")
    )
    result = await job_in(services, QueueKey.PREFERENCE_CALCULATION, recalc, "completed", "failed")
    assert (result.returnvalue["outcome"], result.returnvalue["bookings"]) == ("recalculated", 2)

    out = invoke_cli(env, "prefs", "cust-9", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["bookings"], data["topMaster"], data["preferredHours"]) == (2, "master-1", [10, 18])
    table = invoke_cli(env, "prefs", "cust-9")
    assert table.returncode == 0 and "top master" in table.stdout and "master-1 (2)" in table.stdout


def test_prefs_cli_errors_are_one_line(env: dict[str, str]) -> None:
    from bullwait.dev.embedded import free_port

    down = invoke_cli(dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), "prefs", "cust-1")
    assert down.returncode == 3 and "cannot reach Redis" in down.stderr and "Traceback" not in down.stderr
    empty = invoke_cli(env, "prefs", " ")
    assert empty.returncode == 2 and "CUSTOMER_ID" in empty.stderr
    none = invoke_cli(env, "prefs", "nobody")
    assert none.returncode == 0 and "no bookings recorded" in none.stdout


async def test_global_limit_holds_across_salons(services: Services, api: FakeWhatsApp, start_worker) -> None:  # type: ignore[no-untyped-def]
    start_worker("-q", "waitlist-notification", extra_env={**api.env(), "WHATSAPP_MAX_MESSAGES_PER_SECOND": "4"})
    ids = []
    for i in range(12):  # one per salon: only the global limit applies
        payload = NotificationJob.model_validate(notification_data(f"g-{i}", salon_id=f"salon-g{i}"))
        ids.append(await services.producer.send_slot_available(payload))
    jobs = [await job_in(services, QueueKey.WAITLIST_NOTIFICATION, j, "completed", "failed") for j in ids]
    assert all(j.returnvalue["outcome"] == "sent" for j in jobs)
    times = sorted(r.at for r in api.received())
    assert len(times) == 12, times
    # Never more than 4 in any second (so 12 took three), 0.3 s allowed for the hop to the fake.
    assert max_in_window(times, 1.0 - 0.3) <= 4, times


def test_demo_sends_its_offers_to_a_fake_cloud_api_whatever_whatsapp_is_configured(env: dict[str, str]) -> None:
    """A real token configured (here aimed at a fake standing in for Meta): the demo's made-up
    customers still get nothing from it; the demo's own loopback fake takes the offers."""
    with FakeWhatsApp() as configured:
        demo_env = dict(env, **configured.env())
        result = run_cli(demo_env, "demo", "--embedded-redis", "never", "--timer-ms", "1000", "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "expired" in result.stdout and "booked" in result.stdout
    assert configured.received() == []
    # Customers 0 and 1 always; customer 2's offer may be skipped, booked before it went out.
    assert result.stderr.count("whatsapp offer sent") >= 2, result.stderr
    assert "demo offers went to the fake WhatsApp Cloud API" in result.stderr


async def test_free_slot_retried_after_a_crash_still_announces(services: Services) -> None:
    """The store offered the slot, then the app crashed before enqueuing the offer's jobs:
    calling free_slot again must enqueue them (not leave the entry notified with no
    message and no timer)."""
    wl = services.waitlist
    await wl.join("salon-r", "R1", "cust-R1", "+34600000009")
    now = int(time.time() * 1000)
    first = await services.store.free_slot(
        "salon-r", "slot-r", SLOT_DETAILS, now, now + 60_000
    )  # store only: the "crash"
    assert first.outcome == "offered" and first.next_id == "R1"
    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    assert await expiry.getJobState(expiry_job_id("R1")) == "unknown"
    again, offer = await wl.free_slot("salon-r", "slot-r", SLOT_DETAILS)
    assert again.outcome == "already-offered" and offer is not None
    assert await expiry.getJobState(expiry_job_id("R1")) == "delayed"
