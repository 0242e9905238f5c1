"""The global sliding-window send limit (`WHATSAPP_MAX_MESSAGES_PER_SECOND`,
bullwait.waitlist.ratelimit): exact across processes, waited for in-process, given back when the
API did not take the message. Real Redis, the loopback fake Cloud API; the assertions
count sends per sliding window, they do not time anything.

The fake stamps a request when its handler thread has read it, a hop after the worker
took its place; the tests set WHATSAPP_RATE_WINDOW_MARGIN_MS well above that hop so
that a count over the limit means the limiter let it through, not thread scheduling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from bullmq import DelayedError, UnrecoverableError

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.logs import get_logger
from bullwait.runtime.dispatch import Context
from bullwait.runtime.processors.notification import send_slot_available
from bullwait.runtime.runner import worker_options
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.ratelimit import SlidingWindow
from bullwait.waitlist.whatsapp import WhatsAppUnavailable

from helpers.jobdata import notification_data
from helpers.reliability import counts, eventually
from helpers.sends import max_in_window

MARGIN_MS = 400


@dataclass
class StubJob:
    """The processor's view of a bullmq job: only `moveToDelayed` is used on these paths."""

    id: str
    delayed: list[int] = field(default_factory=list)

    async def moveToDelayed(self, until_ms: int, token: str) -> None:  # noqa: N802 (bullmq's name)
        self.delayed.append(until_ms)


@pytest.fixture
async def sending(settings: Settings, api: FakeWhatsApp) -> AsyncIterator[Services]:
    """Services whose sender is the real Cloud API client pointed at the fake, 2 sends per second."""
    svc = await build_services(
        settings.with_overrides(
            whatsapp_api_base_url=api.base_url,
            whatsapp_access_token="test-secret-token-xyz",
            whatsapp_phone_number_id="1234567890",
            whatsapp_max_messages_per_second=2,
            whatsapp_rate_window_margin_ms=MARGIN_MS,
        )
    )
    yield svc
    await svc.close()


async def run(svc: Services, waitlist_id: str, salon: str = "salon-1") -> tuple[StubJob, Any]:
    """One send-slot-available run in this process; returns the job and the outcome (or the exception)."""
    job = StubJob(f"job-{waitlist_id}")
    payload = NotificationJob.model_validate(
        notification_data(waitlist_id, salon_id=salon, phone=f"+3460{abs(hash(waitlist_id)) % 10**7:07d}")
    )
    ctx = Context(
        job, "token", QueueKey.WAITLIST_NOTIFICATION, "waitlist-notification", svc.settings, get_logger(), svc
    )  # type: ignore[arg-type]
    try:
        return job, await send_slot_available(payload, ctx)
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        return job, exc


async def test_refused_sends_wait_in_process_and_hold_the_window(
    sending: Services, api: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 sends at 2 per second: two wait for the next window, in-process (no delayed, no attempt).
    # The longest in-process wait leaves a loaded machine ~100 ms over the 1 s window; what is
    # tested is waiting rather than delaying, so give the wait room.
    from bullwait.runtime.processors import notification

    monkeypatch.setattr(notification, "GLOBAL_WAIT_MAX_MS", 10_000)
    results = await asyncio.gather(*(run(sending, f"w{i}", f"salon-{i}") for i in range(4)))
    assert [r[1]["outcome"] for r in results] == ["sent"] * 4, results
    assert all(job.delayed == [] for job, _ in results)
    assert max_in_window([r.at for r in api.sent()]) <= 2


@pytest.mark.parametrize(
    "status, code, raised",
    [
        (429, 130429, DelayedError),
        (500, 131000, WhatsAppUnavailable),
        (400, 131026, UnrecoverableError),
    ],
)
async def test_places_given_back_when_the_api_did_not_take_the_message(
    sending: Services,
    api: FakeWhatsApp,
    status: int,
    code: int,
    raised: type,
) -> None:
    api.fail_next(1, status=status, code=code)
    _, outcome = await run(sending, "w-fail")
    assert isinstance(outcome, raised), outcome
    assert await sending.global_limiter.in_window() == 0
    assert await sending.rate_limiter.in_window("salon-1") == 0
    _, outcome = await run(sending, "w-ok", "salon-2")
    assert outcome["outcome"] == "sent"
    assert await sending.global_limiter.in_window() == 1


async def test_window_admits_exactly_the_limit_under_contention(settings: Settings) -> None:
    # 40 concurrent callers on 4 connections for one window: exactly `limit` get in.
    from bullwait.engine.connection import redis_client

    clients = [redis_client(settings) for _ in range(4)]
    windows = [SlidingWindow(c, limit=7, window_ms=60_000) for c in clients]
    key = f"{settings.bullwait_store_prefix}{{whatsapp:contention}}:sends"
    decisions = await asyncio.gather(*(windows[i % 4].acquire(key, f"m{i}") for i in range(40)))
    assert sum(d.allowed for d in decisions) == 7
    assert all(d.retry_in_ms > 0 for d in decisions if not d.allowed)
    for c in clients:
        await c.aclose()


def test_sliding_window_rejects_bad_limits(settings: Settings) -> None:
    from bullwait.engine.connection import redis_client

    with pytest.raises(ValueError, match="limit >= 1"):
        SlidingWindow(redis_client(settings), limit=0, window_ms=1000)


def test_no_bullmq_limiter_on_the_notification_queue(settings: Settings) -> None:
    # Fixed 1 s windows of job starts would let ~2x the limit through a sliding second.
    assert "limiter" not in worker_options(QueueKey.WAITLIST_NOTIFICATION, settings, "w")


async def test_global_limit_exact_across_worker_processes(settings: Settings, api: FakeWhatsApp, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Two `bullwait worker` processes, 10 concurrent sends each, one salon per message (only
    the global limit applies): no sliding second at the API holds more than 5."""
    api.latency = 0.05
    env = {
        **api.env(),
        "WHATSAPP_MAX_MESSAGES_PER_SECOND": "5",
        "WHATSAPP_RATE_WINDOW_MARGIN_MS": str(MARGIN_MS),
        "WAITLIST_NOTIFICATION_CONCURRENCY": "10",
    }
    for _ in range(2):
        start_worker("-q", "waitlist-notification", extra_env=env)
    svc = await build_services(settings)
    try:
        total = 24
        for i in range(total):
            data = notification_data(f"x-{i}", salon_id=f"salon-x{i}", phone=f"+346100{i:05d}")
            await svc.producer.send_slot_available(NotificationJob.model_validate(data))

        async def finished() -> dict[str, int] | None:
            c = await counts(svc.producer, QueueKey.WAITLIST_NOTIFICATION)
            return c if c["completed"] + c["failed"] == total else None

        done = await eventually(finished, timeout=60, message=f"{total} notifications finished")
    finally:
        await svc.close()
    assert done["completed"] == total
    sent = api.sent()
    assert sorted(r.body["to"] for r in sent) == sorted(f"346100{i:05d}" for i in range(total))
    assert max_in_window([r.at for r in sent]) <= 5


async def test_waiting_in_line_gives_up_after_max_wait(settings: Settings) -> None:
    # 1 per second, 3 jobs willing to wait 300 ms: one sends, two are told how long to wait.
    from bullwait.engine.connection import redis_client
    from bullwait.waitlist.ratelimit import GlobalSendLimiter

    client = redis_client(settings)
    limiter = GlobalSendLimiter(client, settings.bullwait_store_prefix, "line", per_second=1)
    decisions = await asyncio.gather(*(limiter.acquire_waiting(f"m{i}", 300) for i in range(3)))
    await client.aclose()
    assert sum(d.allowed for d in decisions) == 1
    assert all(d.retry_in_ms > 0 for d in decisions if not d.allowed)
