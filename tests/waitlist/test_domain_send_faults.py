"""The send path's own faults, driven at chosen calls: the processor run directly (same
job id and lock token for every run, as bullwait's worker may give them), the suite's
real Redis, the loopback fake Cloud API, and wrappers that make one Redis write fail.

- A later run of a job never takes an earlier run's claim or release as its own.
- Two flushes of one record's backlog run each write once, in order; a bad write does not
  stop the background flusher; the flusher retries at a short fixed pace, not a growing one.
- A claim whose reply was lost is given back in process when Redis answers again.
- A send cancelled before its request was written gives back its claim and places.
- A Redis error giving places back never replaces the job's real outcome.
- Shutdown does not wait on the backlog for more than `CLOSE_FLUSH_S`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bullmq import DelayedError, UnrecoverableError
from redis.exceptions import ConnectionError as RedisConnectionError

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.logs import get_logger
from bullwait.runtime.dispatch import Context
from bullwait.runtime.processors.notification import send_slot_available, slot_reference
from bullwait.runtime.services import Services
from bullwait.waitlist import idempotency
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.whatsapp import WhatsAppAmbiguous

from helpers.jobdata import notification_data
from helpers.sends import TIMEOUT_S, services  # noqa: F401 (fixture)


class Outage:
    """Stands in for a send-record script while `down`: the caller sees a ConnectionError
    and the script never runs (its command never reached Redis)."""

    def __init__(self, script: Any, down: bool = True, failures: int | None = None) -> None:
        self.script, self.down, self.failures, self.calls = script, down, failures, 0

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls += 1
        if self.failures is not None:
            self.down = self.calls <= self.failures
        if self.down:
            raise RedisConnectionError("Connection refused (Redis down, test)")
        return await self.script(keys=keys, args=args)


class FakeJob:
    """What the processor uses of a bullmq Job; `moveToDelayed` is the worker's business."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id

    async def moveToDelayed(self, until_ms: int, token: str) -> None:  # noqa: N802 - bullmq's name
        return None


def _ctx(services: Services, job_id: str = "job-1", token: str = "tok-slot-1") -> Context:
    return Context(
        job=FakeJob(job_id),
        token=token,
        queue=QueueKey.WAITLIST_NOTIFICATION,  # type: ignore[arg-type]
        queue_name="waitlist-notification",
        settings=services.settings,
        log=get_logger(test="send-faults"),
        services=services,
    )


def _payload(waitlist_id: str, salon_id: str, phone: str) -> NotificationJob:
    return NotificationJob.model_validate(notification_data(waitlist_id, salon_id=salon_id, phone=phone))


def _key(services: Services, payload: NotificationJob) -> str:
    return services.send_records.key(payload.salon_id, payload.waitlist_id, slot_reference(payload))


async def _until(check: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not true within {timeout}s"
        await asyncio.sleep(0.05)


# --- one owner per run -------------------------------------------------------------------


async def test_a_later_run_with_the_same_job_id_and_token_does_not_take_the_earlier_claim(
    services: Services, api: FakeWhatsApp
) -> None:
    """Run 1 sends without an answer and cannot count it (Redis away for that write). Run 2,
    same job id and token, after run 1's claim expired, with the count still unwritten:
    it must not find the claim its own (that was a second send, and then a third)."""
    records = services.send_records
    outage = Outage(records._ambiguous)
    records._ambiguous = outage  # type: ignore[method-assign]
    api.slow_next(TIMEOUT_S + 1.0, count=3)
    payload = _payload("w-owner", "salon-owner", "+34600000401")
    key = _key(services, payload)
    ctx = _ctx(services, job_id="job-owner", token="tok-same")
    with pytest.raises(WhatsAppAmbiguous):
        await send_slot_available(payload, ctx)
    assert records.backlog == 1, "the count waits for Redis"

    async def claim_expired() -> bool:
        seconds, micros = await records.client.time()
        return int((await records.get(key))["claimUntil"]) < seconds * 1000 + micros // 1000

    await _until(claim_expired)
    with pytest.raises(UnrecoverableError, match="Send outcome unknown"):
        await send_slot_available(payload, ctx)
    assert len(api.received()) == 1, "the second run sent again on the first run's claim"

    # Redis back: the count lands, one more send goes, its own no-answer closes the record.
    outage.down = False
    await _until(lambda: asyncio.sleep(0, records.backlog == 0))
    with pytest.raises(UnrecoverableError, match="No answer from the WhatsApp Cloud API"):
        await send_slot_available(payload, ctx)
    assert len(api.received()) == 2
    assert (await records.get(key))["state"] == "ambiguous"


# --- the backlog --------------------------------------------------------------------------


async def test_two_flushes_of_one_record_run_each_write_once_in_order(services: Services) -> None:
    records = SendRecords(services.send_records.client, "t-flush:")
    gate, ran = asyncio.Event(), []

    async def first() -> None:
        ran.append("first")
        await gate.wait()

    async def second() -> None:
        ran.append("second")

    records._backlog["k"] = [first, second]  # no background flusher: only the two below
    flushes = [asyncio.ensure_future(records._flush_key("k")) for _ in range(2)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*flushes) == [True, True]
    assert ran == ["first", "second"] and records.backlog == 0


async def test_a_bad_write_does_not_stop_the_background_flusher(services: Services) -> None:
    records = SendRecords(services.send_records.client, "t-bad:")
    ran: list[str] = []

    async def bad() -> None:
        raise ValueError("a bug, not Redis away")

    async def good() -> None:
        ran.append("good")

    records._defer("bad", bad)
    records._defer("good", good)
    await _until(lambda: asyncio.sleep(0, ran == ["good"]))
    await _until(lambda: asyncio.sleep(0, records.backlog == 0))


async def test_the_flusher_keeps_a_short_pace_while_redis_is_away(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pauses the flusher asks for while a write keeps failing (recorded, not slept:
    no timing measured) stay short: a release waiting in the backlog lets a retry claim."""
    records = SendRecords(services.send_records.client, "t-pace:")
    real_sleep, pauses = asyncio.sleep, []

    async def recorded_sleep(seconds: float, result: Any = None) -> Any:
        pauses.append(seconds)
        return await real_sleep(0, result)

    failures = {"left": 8}

    async def write() -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RedisConnectionError("Connection refused (Redis down, test)")

    monkeypatch.setattr(idempotency.asyncio, "sleep", recorded_sleep)
    records._defer("k", write)
    deadline = asyncio.get_running_loop().time() + 20
    while records.backlog and asyncio.get_running_loop().time() < deadline:
        await real_sleep(0.01)
    monkeypatch.undo()
    assert records.backlog == 0 and len(pauses) >= 9
    assert max(pauses) <= 1.0, pauses


async def test_a_claim_whose_reply_was_lost_is_released_in_process(services: Services) -> None:
    """The claim reached Redis, its reply did not; the release fails twice, then Redis
    answers: the claim is given back before `claim` raises, nothing is left to the backlog."""
    records = services.send_records
    key = records.key("salon-lostclaim", "w-1", "slot-1")

    async def claim_reply_lost(keys: list[str], args: list[Any]) -> Any:
        await real_claim(keys=keys, args=args)
        raise RedisConnectionError("Connection closed by server (reply lost, test)")

    real_claim = records._claim
    records._claim = claim_reply_lost  # type: ignore[method-assign]
    records._release = Outage(records._release, failures=2)  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        await records.claim(key, "job-1/tok/n1", 0, 3000, job_id="job-1")
    assert records.backlog == 0
    assert (await records.get(key))["state"] == "released"


async def test_close_gives_the_backlog_a_bounded_last_try(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    records = SendRecords(services.send_records.client, "t-close:")

    async def hangs() -> None:  # Redis away: redis-py retrying for a long time
        await asyncio.Event().wait()

    records._backlog["k"] = [hangs]
    monkeypatch.setattr(idempotency, "CLOSE_FLUSH_S", 0.2, raising=False)
    await asyncio.wait_for(records.close(), 10)
    assert records.backlog == 1, "what is left is kept (and logged), not dropped silently"


# --- the send itself ---------------------------------------------------------------------


class HangingSender:
    """A sender that never gets an answer; it writes the request first if `writes`."""

    def __init__(self, writes: bool) -> None:
        self.writes, self.entered = writes, asyncio.Event()

    async def send_slot_offer(self, phone: str, slot: Any, on_sent: Any = None) -> str:
        if self.writes and on_sent is not None:
            await on_sent()
        self.entered.set()
        await asyncio.Event().wait()
        return "not reached"

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("written", [False, True])
async def test_a_cancelled_send_gives_back_its_claim_only_if_the_request_was_not_written(
    services: Services, written: bool
) -> None:
    payload = _payload(f"w-cancel-{written}", f"salon-cancel-{written}", "+34600000402")
    key = _key(services, payload)
    sender, real_sender = HangingSender(writes=written), services.sender
    services.sender = sender
    try:
        run = asyncio.ensure_future(send_slot_available(payload, _ctx(services)))
        await asyncio.wait_for(sender.entered.wait(), 10)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    finally:
        services.sender = real_sender
    assert services.rate_limiter and services.global_limiter
    record = await services.send_records.get(key)
    places = await services.rate_limiter.in_window(payload.salon_id), await services.global_limiter.in_window()
    if written:  # it may have left: the claim stays, its retry says "outcome unknown"
        assert record["state"] == "sending" and places[0] == 1
    else:
        assert record["state"] == "released" and places == (0, 0), (record, places)


async def test_a_redis_error_giving_places_back_keeps_the_real_outcome(services: Services, api: FakeWhatsApp) -> None:
    api.fail_next(status=400, code=131026, message="Message undeliverable")
    assert services.rate_limiter is not None

    async def redis_away(salon_id: str, member: str) -> None:
        raise RedisConnectionError("Connection refused (Redis down, test)")

    services.rate_limiter.release = redis_away  # type: ignore[method-assign]
    payload = _payload("w-giveback", "salon-giveback", "+34600000403")
    with pytest.raises(UnrecoverableError, match="Message undeliverable"):
        await send_slot_available(payload, _ctx(services))


async def test_a_throttled_send_with_places_not_given_back_still_sleeps(services: Services, api: FakeWhatsApp) -> None:
    api.fail_next(status=429, code=130429, message="Rate limit hit")
    assert services.global_limiter is not None

    async def redis_away(member: str) -> None:
        raise RedisConnectionError("Connection refused (Redis down, test)")

    services.global_limiter.release = redis_away  # type: ignore[method-assign]
    payload = _payload("w-giveback2", "salon-giveback2", "+34600000404")
    with pytest.raises(DelayedError):
        await send_slot_available(payload, _ctx(services))
