"""The WhatsApp send path under lost Redis replies and ambiguous API outcomes: a real
bullmq worker (in this process, so a test can make one Redis script's reply go missing),
the suite's real Redis and the loopback fake Cloud API.

- Every send-record script run twice by the same owner (redis-py re-sends a command whose
  reply was lost) answers as the first time.
- A lost reply never loses an offer nor fails the job: one message, job completed.
- A send that got no answer (slow, reset) is sent at most once more; a second one fails
  the job saying the message may have been delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.runtime.processors.notification import slot_reference
from bullwait.runtime.runner import run_workers
from bullwait.runtime.services import Services
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.payloads import NotificationJob

from helpers.jobdata import notification_data
from helpers.sends import TIMEOUT_S, services  # noqa: F401 (fixture)


class LostReply:
    """Stands in for a send-record script whose reply is lost `times` times: the script
    runs in Redis (when `runs`), then the caller sees a ConnectionError."""

    def __init__(self, script: Any, times: int = 1, runs: bool = True, resend: bool = False) -> None:
        self.script, self.times, self.runs, self.resend = script, times, runs, resend
        self.calls = 0

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls += 1
        if self.times <= 0:
            return await self.script(keys=keys, args=args)
        self.times -= 1
        if self.runs:
            await self.script(keys=keys, args=args)
        if self.resend:  # redis-py's own retry: the same command again on a new connection
            return await self.script(keys=keys, args=args)
        raise RedisConnectionError("Connection closed by server (reply lost, test)")


async def _run(services: Services, *data: dict[str, Any], timeout: float = 25) -> list[Any]:
    """Enqueue these notifications, run a worker until all have finished; their jobs."""
    ids = [await services.producer.send_slot_available(NotificationJob.model_validate(d)) for d in data]
    queue = services.producer.queue(QueueKey.WAITLIST_NOTIFICATION)
    stop = asyncio.Event()
    worker = asyncio.ensure_future(
        run_workers(
            services.settings,
            services.registry,
            [QueueKey.WAITLIST_NOTIFICATION],
            services=services,
            observer=services.observer,
            stop=stop,
        )
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [await queue.getJobState(i) for i in ids]
            if all(s in ("completed", "failed") for s in states):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"jobs not finished in {timeout}s: {states}")
    finally:
        stop.set()
        assert await worker == 0
    return [await queue.getJob(i) for i in ids]


def _record_key(services: Services, data: dict[str, Any]) -> str:
    payload = NotificationJob.model_validate(data)
    return services.send_records.key(payload.salon_id, payload.waitlist_id, slot_reference(payload))


def _ambiguous_count(services: Services, kind: str, decision: str) -> float:
    value = services.observer.registry.get_sample_value(
        "bullwait_whatsapp_ambiguous_total", {"kind": kind, "decision": decision}
    )
    return value or 0.0


# --- every script safe to run twice -----------------------------------------------------


async def test_each_send_record_script_run_twice_by_its_owner_answers_the_same(services: Services) -> None:
    records: SendRecords = services.send_records
    key = records.key("salon-twice", "w-1", "slot-1")
    claims = [await records.claim(key, "job-1/tok-a", 0, 3000, job_id="job-1") for _ in range(2)]
    assert [c.outcome for c in claims] == ["claimed", "claimed"], "a re-sent claim finds its own claim"
    assert (await records.claim(key, "job-2/tok-b", 0, 3000)).outcome == "busy", "another owner waits"
    assert [await records.release(key, "job-1/tok-a", "429", throttled=True) for _ in range(2)] == [1, 1]
    assert (await records.get(key))["throttled"] == "1"
    await records.claim(key, "job-1/tok-c", 0, 3000, job_id="job-1")
    assert [await records.ambiguous(key, "job-1/tok-c", "timeout") for _ in range(2)] == [1, 1]
    await records.claim(key, "job-1/tok-d", 0, 3000, job_id="job-1")
    assert [await records.mark_sent(key, "job-1/tok-d", "wamid.X", 1) for _ in range(2)] == [True, True]
    record = await records.get(key)
    assert (record["state"], record["wamid"], record["ambiguous"], record["job"]) == ("sent", "wamid.X", "1", "job-1")


# --- lost replies ---------------------------------------------------------------------


async def test_claim_resent_after_a_lost_reply_still_sends_once(services: Services, api: FakeWhatsApp) -> None:
    records = services.send_records
    records._claim = LostReply(records._claim, resend=True)  # type: ignore[method-assign]
    data = notification_data("w-resent", salon_id="salon-lr1", phone="+34600000101")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    assert len(api.received()) == 1


async def test_claim_whose_reply_never_came_is_given_back_and_the_retry_sends(
    services: Services, api: FakeWhatsApp
) -> None:
    records = services.send_records
    records._claim = LostReply(records._claim)  # type: ignore[method-assign]
    data = notification_data("w-lostclaim", salon_id="salon-lr2", phone="+34600000102")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    assert job.attemptsMade == 2 and len(api.received()) == 1


async def test_redis_error_after_the_send_completes_the_job_with_one_message(
    services: Services, api: FakeWhatsApp
) -> None:
    records = services.send_records
    lost = LostReply(records._sent)
    records._sent = lost  # type: ignore[method-assign]
    data = notification_data("w-marklost", salon_id="salon-lr3", phone="+34600000103")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    assert job.attemptsMade == 1 and len(api.received()) == 1 and lost.calls == 2
    record = await records.get(_record_key(services, data))
    assert record["state"] == "sent" and record["wamid"] == job.returnvalue["wamid"]


async def test_send_recorded_later_when_redis_keeps_failing(services: Services, api: FakeWhatsApp) -> None:
    """mark_sent fails past the in-process retries (and the write never reached Redis):
    the job still completes, the backlog records the send, a duplicate job finds it."""
    records = services.send_records
    records._sent = LostReply(records._sent, times=5, runs=False)  # type: ignore[method-assign]
    data = notification_data("w-backlog", salon_id="salon-lr4", phone="+34600000104")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    key = _record_key(services, data)
    for _ in range(100):
        if records.backlog == 0:
            break
        await asyncio.sleep(0.05)
    assert records.backlog == 0 and (await records.get(key))["state"] == "sent"
    [again] = await _run(services, data)
    assert again.returnvalue["outcome"] == "already-sent" and again.returnvalue["wamid"] == job.returnvalue["wamid"]
    assert len(api.received()) == 1


# --- ambiguous outcomes ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["slow", "reset"])
async def test_one_ambiguous_outcome_allows_one_resend(services: Services, api: FakeWhatsApp, fault: str) -> None:
    _queue_fault(api, fault)
    data = notification_data(f"w-amb1-{fault}", salon_id=f"salon-a1{fault}", phone="+34600000201")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    assert job.attemptsMade == 2 and len(api.received()) == 2
    kind = "timeout" if fault == "slow" else "connection"
    assert _ambiguous_count(services, kind, "retried") == 1


@pytest.mark.parametrize("fault", ["slow", "reset"])
async def test_second_ambiguous_outcome_fails_the_job_without_a_third_send(
    services: Services, api: FakeWhatsApp, fault: str
) -> None:
    _queue_fault(api, fault, count=3)
    data = notification_data(f"w-amb2-{fault}", salon_id=f"salon-a2{fault}", phone="+34600000202")
    [job] = await _run(services, data)
    assert job.returnvalue is None or not job.returnvalue, job.returnvalue
    assert len(api.received()) == 2, "at most one resend after an ambiguous outcome"
    key = _record_key(services, data)
    assert job.failedReason.startswith("No answer from the WhatsApp Cloud API")
    assert "may have been delivered" in job.failedReason and f"delete Redis key {key}" in job.failedReason
    assert "outcome unknown" not in job.failedReason
    kind = "timeout" if fault == "slow" else "connection"
    assert _ambiguous_count(services, kind, "retried") == 1 and _ambiguous_count(services, kind, "failed") == 1
    assert (await services.send_records.get(key))["state"] == "ambiguous"
    # A duplicate of the notification sends nothing either.
    [dup] = await _run(services, data)
    assert dup.failedReason.startswith("No answer") and len(api.received()) == 2


async def test_truncated_200_counts_as_sent_once(services: Services, api: FakeWhatsApp) -> None:
    api.odd_next("truncated", status=200, count=3)
    data = notification_data("w-trunc", salon_id="salon-tr", phone="+34600000203")
    [job] = await _run(services, data)
    assert job.returnvalue and job.returnvalue["outcome"] == "sent", job.failedReason
    assert job.returnvalue["wamid"] == "unknown-id-http-200" and len(api.received()) == 1


def _queue_fault(api: FakeWhatsApp, fault: str, count: int = 1) -> None:
    if fault == "slow":
        api.slow_next(TIMEOUT_S + 1.0, count=count)  # accepted, answered after the timeout
    else:
        api.odd_next("reset", count=count)


async def test_many_notifications_each_received_at_most_twice(services: Services, api: FakeWhatsApp) -> None:
    """Every request of 12 notifications at once gets a slow answer, a reset or a
    truncated 200 (more faults queued than requests can be made)."""
    for kind in ("slow", "reset", "truncated") * 12:
        if kind == "truncated":
            api.odd_next("truncated", status=200)
        else:
            _queue_fault(api, kind)
    data = [notification_data(f"w-mix{i}", salon_id=f"salon-mix{i}", phone=f"+346000003{i:02d}") for i in range(12)]
    jobs = await _run(services, *data)
    per_phone = Counter(r.body["to"] for r in api.received())
    assert len(per_phone) == 12 and max(per_phone.values()) <= 2, per_phone
    for job in jobs:
        to = job.data["customerPhone"].lstrip("+")
        if job.returnvalue:  # a truncated 200 is a send
            assert job.returnvalue["outcome"] == "sent"
        else:
            assert job.failedReason.startswith("No answer from the WhatsApp Cloud API"), job.failedReason
            assert per_phone[to] == 2, "a job fails only after its second send without an answer"


# --- the other Lua of bullwait, run twice (a re-send after a lost reply) ---------------


async def test_rate_limit_acquire_run_twice_keeps_the_place(services: Services) -> None:
    from bullwait.waitlist.ratelimit import SlidingWindow

    window = SlidingWindow(services.send_records.client, limit=1, window_ms=60_000)
    key = f"{services.settings.bullwait_store_prefix}{{salon:twice}}:sends"
    first, again = await window.acquire(key, "job-1/tok/1"), await window.acquire(key, "job-1/tok/1")
    assert first.allowed and again.allowed, "a re-sent acquire finds its own place"
    assert not (await window.acquire(key, "job-2/tok/2")).allowed
    assert await window.in_window(key) == 1
