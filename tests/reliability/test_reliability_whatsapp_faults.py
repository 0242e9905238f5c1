"""The WhatsApp Cloud API misbehaving for a stretch (a 429 storm; 5xx answers and requests
that hang past WHATSAPP_TIMEOUT_SECONDS): a real `bullwait worker` subprocess against the
loopback fake API. Every notification is sent exactly once in the end, none fails, the
per-salon and global limits hold on the fake's arrival times.

"Minutes" of throttling are scaled down to seconds (the back-off is 1 s, 2 s, 4 s ... per
notification, so a 5 s storm makes each notification retry three or four times)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bullmq import Job

from bullwait.dev.fake_whatsapp import FakeWhatsApp, Recorded
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer

from helpers.jobdata import notification_data
from helpers.reliability import counts, eventually

SALONS = ("salon-a", "salon-b", "salon-c")
PER_SALON = 4
SALON_LIMIT, SALON_WINDOW_S = 3, 3.0
GLOBAL_PER_SECOND = 4
# The fake stamps a request when its thread has read it, a hop after the worker took its
# place: both windows are kept MARGIN_MS longer (WHATSAPP_RATE_WINDOW_MARGIN_MS) so the
# counts hold exactly on the fake's clock on a loaded 2-core machine.
MARGIN_MS = 300
SALON_SLACK_S = GLOBAL_SLACK_S = 0.0


def _limits(api: FakeWhatsApp, timeout_s: float = 10) -> dict[str, str]:
    return {
        **api.env(),
        "WAITLIST_NOTIFICATION_RATE_LIMIT": str(SALON_LIMIT),
        "WAITLIST_NOTIFICATION_RATE_WINDOW_MS": str(int(SALON_WINDOW_S * 1000)),
        "WHATSAPP_MAX_MESSAGES_PER_SECOND": str(GLOBAL_PER_SECOND),
        "WHATSAPP_RATE_WINDOW_MARGIN_MS": str(MARGIN_MS),
        "WHATSAPP_TIMEOUT_SECONDS": str(timeout_s),
    }


def _phone(salon: int, i: int) -> str:
    return f"+3461{salon}00{i:04d}"


async def _enqueue(producer: Producer, **opts: Any) -> dict[str, str]:
    """PER_SALON notifications for each salon; returns job id -> phone (E.164 without '+')."""
    jobs = {}
    for s, salon in enumerate(SALONS):
        for i in range(PER_SALON):
            data = notification_data(f"{salon}-w{i}", salon_id=salon, phone=_phone(s, i))
            job_id = await producer.add(QueueKey.WAITLIST_NOTIFICATION, NotificationJob.model_validate(data), **opts)
            jobs[job_id] = _phone(s, i).lstrip("+")
    return jobs


async def _all_finished(producer: Producer, total: int) -> dict[str, int]:
    async def finished() -> dict[str, int] | None:
        c = await counts(producer, QueueKey.WAITLIST_NOTIFICATION)
        return c if c["completed"] + c["failed"] == total else None

    return await eventually(finished, timeout=60, message=f"{total} notifications finished")


def _assert_window(times: list[float], limit: int, window: float, slack: float, what: str) -> None:
    """No more than `limit` of `times` in any `window` (minus the hop slack)."""
    times = sorted(times)
    gaps = [round(times[i + limit] - times[i], 3) for i in range(len(times) - limit)]
    assert all(g >= window - slack for g in gaps), f"{what}: more than {limit} in {window}s: {gaps}"


def _assert_limits_held(api: FakeWhatsApp) -> None:
    # Both limits count messages sent: a throttled or failed request gives its global and
    # salon places back (bullwait.waitlist.ratelimit), so only the answered-200 requests are counted.
    _assert_window([r.at for r in api.sent()], GLOBAL_PER_SECOND, 1.0, GLOBAL_SLACK_S, "global limit, any second")
    for s, salon in enumerate(SALONS):
        sent = [r.at for r in api.sent() if r.body["to"].startswith(_phone(s, 0).lstrip("+")[:6])]
        assert len(sent) == PER_SALON, (salon, len(sent))
        _assert_window(sent, SALON_LIMIT, SALON_WINDOW_S, SALON_SLACK_S, salon)


def _assert_each_sent_once(api: FakeWhatsApp, jobs: dict[str, str]) -> None:
    per_phone = Counter(r.body["to"] for r in api.sent())
    assert per_phone == Counter(jobs.values()), f"sent per customer: {per_phone}"


async def _results(producer: Producer, jobs: dict[str, str]) -> list[Any]:
    queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
    return [await Job.fromId(queue, job_id) for job_id in jobs]


async def test_throttling_storm_waits_it_out_sends_once_within_limits(
    settings: Settings, api: FakeWhatsApp, start_worker: Any
) -> None:
    worker = start_worker("-q", "waitlist-notification", extra_env=_limits(api))
    api.fail_for(5.0, status=429, code=130429)  # no Retry-After: bullwait's own back-off
    async with Producer(settings) as producer:
        jobs = await _enqueue(producer, removeOnComplete=False, removeOnFail=False)  # the catalog's 3 attempts
        final = await _all_finished(producer, len(jobs))
        results = await _results(producer, jobs)
    assert final["failed"] == 0 and final["completed"] == len(jobs), final
    assert all(j.returnvalue["outcome"] == "sent" for j in results)
    assert all(j.attemptsMade <= 1 and not j.failedReason for j in results), "throttling used no attempt"
    _assert_each_sent_once(api, jobs)
    answered = Counter(r.answered for r in api.received())
    assert answered[200] == len(jobs) and set(answered) == {200, 429}, answered
    throttled = [r for r in api.received() if r.answered == 429]
    per_phone_throttled = Counter(r.body["to"] for r in throttled)
    assert max(per_phone_throttled.values()) >= 2, "notifications were throttled again after backing off"
    assert len(per_phone_throttled) >= len(jobs) // 2, per_phone_throttled
    # Each customer's requests, in arrival order: throttled until the storm was over, then sent
    # once, and nothing after it (a worker that gave up would leave a 429 last).
    for phone in jobs.values():
        answers = [r.answered for r in api.received() if r.body["to"] == phone]
        assert answers[-1] == 200 and set(answers[:-1]) <= {429}, (phone, answers)
    assert worker.log().count("whatsapp throttled, backing off") == answered[429]
    _assert_limits_held(api)
    assert worker.terminate() == 0
    storm_s = throttled[-1].at - throttled[0].at
    print(f"429 storm: {answered[429]} throttled requests over {storm_s:.1f}s, {answered[200]} sent")


async def test_server_errors_and_timeouts_retry_and_send_once_within_limits(
    settings: Settings, api: FakeWhatsApp, start_worker: Any
) -> None:
    # Three 503s and three requests that hang past the 1 s client timeout and then answer
    # 500: the API did not accept those (a hang that ends in a 200 is the documented
    # duplicate case, see test_domain_flow.py's SIGKILL test for the opposite guard).
    for _ in range(3):
        api.fail_next(status=503)
        api.fail_next(status=500, hang=2.0)
    worker = start_worker("-q", "waitlist-notification", extra_env=_limits(api, timeout_s=1))
    async with Producer(settings) as producer:
        # 7 attempts: even if all six faults hit one notification, it still has one left.
        jobs = await _enqueue(producer, attempts=7, removeOnComplete=False, removeOnFail=False)
        final = await _all_finished(producer, len(jobs))
        results = await _results(producer, jobs)
    assert final["failed"] == 0 and final["completed"] == len(jobs), final
    assert all(j.returnvalue["outcome"] == "sent" for j in results)
    # Each 5xx or timeout used exactly one attempt; completion counts one more.
    assert sum(j.attemptsMade - 1 for j in results) == 6, [j.attemptsMade for j in results]
    _assert_each_sent_once(api, jobs)
    answered = Counter(r.answered for r in api.received())
    assert answered == Counter({200: len(jobs), 503: 3, 500: 3}), answered
    log = worker.log()
    assert log.count("timed out") >= 3, "the hung requests were cut by WHATSAPP_TIMEOUT_SECONDS"
    _assert_limits_held(api)
    assert worker.terminate() == 0


def test_fake_window_answers_errors_then_recovers() -> None:
    """The fake's `fail_for` (used above) really throttles, then really recovers."""
    import httpx

    window = 3.0  # long enough that the first request lands in it on a busy machine
    with FakeWhatsApp() as fake:
        fake.fail_for(window, status=429, code=130429)
        ends = time.monotonic() + window  # no earlier than the fake's own end
        url = f"{fake.base_url}/v21.0/1/messages"
        first = httpx.post(url, json={"to": "1"})
        time.sleep(max(0.0, ends - time.monotonic()) + 0.1)
        second = httpx.post(url, json={"to": "1"})
    assert (first.status_code, first.json()["error"]["code"]) == (429, 130429)
    assert second.status_code == 200 and isinstance(fake.requests[0], Recorded)
