"""`check-expiry` (waitlist-expiry): the offer timer fired.

- entry missing -> outcome `missing`; booked/cancelled/expired -> `already-<state>`;
- still `notified` for that slot and due -> `expired`, and the slot is offered to the
  salon's next `waiting` entry (FIFO): marked `notified`, its `send-slot-available`
  enqueued and its own timer scheduled (`bullwait.waitlist.offers.Waitlist.expire`);
- fired before the store's `expiresAt` (a moved deadline, a skewed clock) -> back to
  sleep until `expiresAt` (`moveToDelayed` + `DelayedError`), no attempt used.

Returns `{"outcome", "waitlistId", "slotId", "nextOffered"}`.
"""

from __future__ import annotations

from typing import Any

from bullmq import DelayedError

from bullwait.runtime.dispatch import Context
from bullwait.waitlist.offers import describe
from bullwait.waitlist.payloads import ExpiryJob


async def check_expiry(payload: ExpiryJob, ctx: Context) -> dict[str, Any]:
    waitlist = ctx.services.waitlist
    result, offer = await waitlist.expire(payload.salon_id, payload.waitlist_id, payload.slot_id)
    if result.outcome == "early" and result.expires_at_ms is not None:
        ctx.log.info("expiry timer fired early, sleeping until expiresAt", expiresAt=result.expires_at_ms)
        await ctx.job.moveToDelayed(result.expires_at_ms, ctx.token)
        raise DelayedError(f"offer of {payload.waitlist_id} expires at {result.expires_at_ms}")
    summary = describe(result, offer)
    ctx.log.info("expiry checked", **{k: v for k, v in summary.items() if v is not None})
    return summary
