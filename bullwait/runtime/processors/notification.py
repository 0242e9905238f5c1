"""`send-slot-available` (waitlist-notification): one WhatsApp offer, sent once.

Order of a run:

1. If the store knows the entry and it no longer holds this offer (booked, expired,
   cancelled, another slot), nothing is sent: outcome `skipped-<state>`. An entry the
   store does not know (a NestJS app keeping its own waitlist) is sent as asked.
2. Claim the send record (`bullwait.waitlist.idempotency`): `sent` -> return the recorded
   `wamid` (outcome `already-sent`); `busy` -> sleep until the other run's claim ends;
   `unknown` -> a run died mid-request: fail at once, do not risk a second message;
   `ambiguous` -> two sends got no answer: fail at once (see step 4). With
   `BULLWAIT_WAIT_REPLICAS` > 0 the claim counts only once that many replicas confirm it
   (`bullwait.engine.durable`); short of that it raises `WriteNotDurable` and nothing is sent, so
   a failover cannot bring back an unclaimed record for a message that already left.
3. Take a place in the salon's rolling window (`bullwait.waitlist.ratelimit`); no room -> give
   the claim back and sleep until there is (`moveToDelayed` + `DelayedError`: no
   failure, no attempt used). Then a place in the global sliding second
   (`WHATSAPP_MAX_MESSAGES_PER_SECOND`); no room -> wait in-process the few ms until one
   frees (at most `GLOBAL_WAIT_MAX_MS`, then give both back and sleep as above). Once
   the request has left, both places are re-stamped with that moment.
4. Send. 429/130429/131056 -> give back claim and both places, sleep (Retry-After, else
   1 s, 2 s, 4 s ...; 6 s, 12 s ... for the pair rate limit; at most 60 s), no
   attempt used. Other 4xx -> `UnrecoverableError`
   with the API's code and message. 5xx, or a failure before the request was sent ->
   raise: BullMQ retries with backoff. Each of these gives the claim and both places
   back (the API did not accept the message). The request left and no answer came
   (`WhatsAppAmbiguous`: a read timeout, a reset) -> counted on the record and in
   `bullwait_whatsapp_ambiguous_total`; the places stay taken (it may have left); the
   first time BullMQ retries (one more send), the second fails the job for good with
   the record's key to delete to send anyway.
   Cancelled (the worker force-closing) before the request was written -> claim and
   places given back (shielded); after -> left as they are (the message may have left).
   A Redis error while giving places back is logged; the outcome above stands.
5. Record `sent` with the `wamid` (retried; never fails the job: the message left) and
   return `{"outcome": "sent", "wamid": ...}`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bullmq import DelayedError, UnrecoverableError
from redis.exceptions import RedisError

from bullwait.engine.bulk import now_ms
from bullwait.runtime.dispatch import Context
from bullwait.waitlist.idempotency import AMBIGUOUS_LIMIT
from bullwait.waitlist.payloads import NotificationJob, SlotDetails
from bullwait.waitlist.whatsapp import WhatsAppAmbiguous, WhatsAppRejected, WhatsAppThrottled, WhatsAppUnavailable

CLAIM_MARGIN_MS = 2000
# Longest in-process wait for a global place. The claim is taken before it and lasts the
# HTTP timeout + CLAIM_MARGIN_MS, so the send must start within the margin.
GLOBAL_WAIT_MAX_MS = 1500
MAX_THROTTLE_BACKOFF_MS = 60_000


def slot_reference(payload: NotificationJob) -> str:
    """What identifies the offered slot in the send record."""
    if payload.slot_id:
        return payload.slot_id
    d: SlotDetails = payload.slot_details
    return f"{d.date}T{d.time}/{d.master_id}/{d.service_id}"


PAIR_RATE_LIMIT_CODE = 131056
PAIR_RATE_BASE_MS = 6000  # Meta: about one message every 6 s to one customer


def throttle_backoff_ms(throttled: int, code: int | None = None) -> int:
    """1 s, 2 s, 4 s ... for throughput limits; 6 s, 12 s ... for the pair rate limit."""
    base = PAIR_RATE_BASE_MS if code == PAIR_RATE_LIMIT_CODE else 1000
    return int(min(MAX_THROTTLE_BACKOFF_MS, base * 2 ** max(0, throttled - 1)))


async def send_slot_available(payload: NotificationJob, ctx: Context) -> dict[str, Any]:
    svc = ctx.services
    base = {"waitlistId": payload.waitlist_id, "salonId": payload.salon_id}
    skipped = await _stale_offer(payload, svc.store)
    if skipped:
        ctx.log.info("notification skipped: offer no longer open", outcome=skipped)
        return {"outcome": skipped, **base}

    records = svc.send_records
    key = records.key(payload.salon_id, payload.waitlist_id, slot_reference(payload))
    # One owner per run: the token alone does not tell runs of a job apart (see
    # `bullwait.waitlist.idempotency`); the job id stays first so the record names its job.
    owner = f"{ctx.job.id}/{ctx.token}/{uuid.uuid4().hex[:12]}"
    now = now_ms()
    claim_ms = int(ctx.settings.whatsapp_timeout_seconds * 1000) + CLAIM_MARGIN_MS
    claim = await records.claim(key, owner, now, claim_ms, job_id=str(ctx.job.id))
    if claim.outcome == "sent":
        return {"outcome": "already-sent", "wamid": claim.wamid, **base}
    if claim.outcome == "busy" and claim.claim_until_ms is not None:
        await _sleep(ctx, claim.claim_until_ms + 50, "another run is sending this notification")
    if claim.outcome == "unknown":
        raise UnrecoverableError(
            f"Send outcome unknown: a worker ({claim.owner}) died while sending this message; "
            f"not sent again to avoid a duplicate. To send anyway, delete Redis key {key} and retry the job"
        )
    if claim.outcome == "ambiguous":
        raise UnrecoverableError(ambiguous_reason(key, f"{AMBIGUOUS_LIMIT} sends got no answer"))

    member = f"{owner}/{now}"
    try:
        refused = await _take_places(payload, svc, member)
    except BaseException:
        # Nothing was sent: without this the retry would find a dead claim and refuse
        # to send ("outcome unknown").
        await _release(records, key, owner, "failed before sending", ctx.log)
        raise
    if refused is not None:
        which, retry_in_ms = refused
        await _release(records, key, owner, f"{which} rate limit", ctx.log)
        ctx.log.info(f"{which} rate limit reached, delaying", retry_in=f"{retry_in_ms}ms")
        await _sleep(ctx, now_ms() + retry_in_ms, f"{which} rate limit ({payload.salon_id})")

    progress = _Progress()
    try:
        wamid = await _send(payload, svc, member, ctx.log, progress)
    except WhatsAppThrottled as exc:
        throttled = await _release(records, key, owner, str(exc), ctx.log, throttled=True)
        await _give_back(payload, svc, member, ctx.log)
        wait = (
            exc.retry_after_ms if exc.retry_after_ms is not None else throttle_backoff_ms(max(1, throttled), exc.code)
        )
        ctx.log.warning("whatsapp throttled, backing off", code=exc.code, status=exc.status, retry_in=f"{wait}ms")
        await _sleep(ctx, now_ms() + wait, str(exc))
    except WhatsAppRejected as exc:
        await _release(records, key, owner, str(exc), ctx.log)
        await _give_back(payload, svc, member, ctx.log)
        raise UnrecoverableError(str(exc)) from None
    except WhatsAppAmbiguous as exc:
        # The message may have left: its rate-limit places stay taken.
        await _after_ambiguous(records, key, owner, exc, ctx)
    except WhatsAppUnavailable as exc:
        await _release(records, key, owner, str(exc), ctx.log)
        await _give_back(payload, svc, member, ctx.log)
        raise
    except BaseException:
        # Cancelled (the worker force-closing) or a sender bug. A request never written was
        # never sent: give claim and places back, shielded from a second cancel, or the retry
        # finds this claim and fails "outcome unknown". One written stays claimed (it may
        # have left; "outcome unknown" is then the truth).
        if not progress.written:
            await asyncio.shield(_undo(payload, svc, records, key, owner, member, ctx.log))
        raise
    recorded = await records.record_sent(key, owner, wamid, now_ms())
    ctx.log.info("whatsapp offer sent", wamid=wamid, customerPhone=payload.customer_phone, recorded=recorded)
    return {"outcome": "sent", "wamid": wamid, **base}


def ambiguous_reason(key: str, what: str) -> str:
    """Why a job fails after its second send without an answer, and how to send anyway."""
    return (
        f"No answer from the WhatsApp Cloud API: {what}; the message may have been delivered, "
        f"so it is not sent again. To send anyway, delete Redis key {key} and retry the job"
    )


async def _after_ambiguous(records: Any, key: str, owner: str, exc: WhatsAppAmbiguous, ctx: Context) -> None:
    """The request left and no answer came. The first time for this record: raise it, so
    BullMQ retries (one more send); the second: fail for good. Always raises."""
    try:
        count = await records.ambiguous(key, owner, str(exc))
    except RedisError:
        # Not counted yet (the backlog will): retrying now could send a third time. The
        # retry's claim finds this run's claim and waits it out, or the count once written.
        count = 0
    observe = getattr(getattr(ctx.services, "observer", None), "whatsapp_ambiguous", None)
    final = count == -1 or count >= AMBIGUOUS_LIMIT
    if observe is not None:
        observe(exc.kind, "failed" if final else "retried")
    ctx.log.warning(
        "whatsapp send got no answer; the message may have been delivered",
        kind=exc.kind,
        ambiguous=count,
        retry=not final,
    )
    if final:
        raise UnrecoverableError(ambiguous_reason(key, f"{exc} (send {max(count, 1)} without one)")) from None
    raise exc


async def _release(records: Any, key: str, owner: str, reason: str, log: Any, throttled: bool = False) -> int:
    """Give the claim back after a send that did not happen. A release Redis did not
    confirm stays in the send records' backlog; it never replaces the job's real outcome."""
    try:
        return int(await records.release(key, owner, reason, throttled=throttled))
    except RedisError as exc:
        log.warning("could not release the send record yet; retrying in the background", error=str(exc)[:200])
        return -1


async def _take_places(payload: NotificationJob, svc: Any, member: str) -> tuple[str, int] | None:
    """A place in the salon's window, then one in the global second, right before the send.

    The global window frees a place every few ms at full speed, so a refused job waits
    for it here (no round trip through delayed, no attempt used), up to
    `GLOBAL_WAIT_MAX_MS`. Returns None with both places held, or (`global`|`salon`, ms
    to wait) with neither held. The salon's place comes first: a job its salon refuses
    never touches the global window, and the global place is taken as late as possible.
    Both are re-stamped when the request leaves (`_send`), so waiting in between does
    not make either count from too early.
    """
    salon = await svc.rate_limiter.acquire(payload.salon_id, member)
    if not salon.allowed:
        return ("salon", salon.retry_in_ms)
    glob = svc.global_limiter
    if glob is None:
        return None
    try:
        decision = await glob.acquire_waiting(member, GLOBAL_WAIT_MAX_MS)
        if decision.allowed:
            return None
        await svc.rate_limiter.release(payload.salon_id, member)
        return ("global", decision.retry_in_ms)
    except BaseException:
        await svc.rate_limiter.release(payload.salon_id, member)
        await _give_back_global(svc, member)
        raise


class _Progress:
    """Whether the request's body has been written (the sender's `on_sent`)."""

    written = False


async def _undo(payload: NotificationJob, svc: Any, records: Any, key: str, owner: str, member: str, log: Any) -> None:
    await _release(records, key, owner, "cancelled before the request was sent", log)
    await _give_back(payload, svc, member, log)


async def _send(payload: NotificationJob, svc: Any, member: str, log: Any, progress: _Progress) -> str:
    """The request; once its body has left, both places are re-stamped with that time
    (`bullwait.waitlist.ratelimit`), in a task of its own so a slow Redis never holds up reading
    the answer (an answer read late could time out a message the API accepted)."""
    stamps: list[asyncio.Future[None]] = []

    async def restamp() -> None:
        try:
            if svc.global_limiter is not None:
                await svc.global_limiter.stamp(member)
            await svc.rate_limiter.stamp(payload.salon_id, member)
        except Exception as exc:  # the message is on its way: never fail the send for this
            log.warning("could not re-stamp the send's rate-limit places", error=repr(exc))

    async def on_sent() -> None:
        progress.written = True
        stamps.append(asyncio.ensure_future(restamp()))

    try:
        wamid: str = await svc.sender.send_slot_offer(payload.customer_phone, payload.slot_details, on_sent=on_sent)
        return wamid
    finally:
        # Before the places are given back or the send recorded: a stamp after a release
        # would take the place again.
        await asyncio.gather(*stamps)


async def _give_back_global(svc: Any, member: str) -> None:
    if svc.global_limiter is not None:
        await svc.global_limiter.release(member)


async def _give_back(payload: NotificationJob, svc: Any, member: str, log: Any) -> None:
    """The send did not happen: free its global and salon places. A Redis error here never
    replaces the job's real outcome (the places then age out of their windows)."""
    try:
        await svc.rate_limiter.release(payload.salon_id, member)
        await _give_back_global(svc, member)
    except RedisError as exc:
        log.warning("could not give back the send's rate-limit places", error=str(exc)[:200])


async def _stale_offer(payload: NotificationJob, store: Any) -> str | None:
    entry = await store.get_entry(payload.salon_id, payload.waitlist_id)
    if entry is None:
        return None
    if entry.state != "notified":
        return f"skipped-{entry.state}"
    if payload.slot_id and entry.slot_id != payload.slot_id:
        return "skipped-other-slot"
    return None


async def _sleep(ctx: Context, until_ms: int, reason: str) -> None:
    """Put the job back to delayed until `until_ms` without using up an attempt."""
    await ctx.job.moveToDelayed(until_ms, ctx.token)
    raise DelayedError(reason)
