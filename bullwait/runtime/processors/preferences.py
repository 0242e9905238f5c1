"""`calculate-preferences` (waitlist-preference-calculation): fold a booking into the
customer's preferences, once per `bookingId`; `action: "recalculate"` rebuilds the
counts from the recorded bookings. Returns the outcome and the favourites."""

from __future__ import annotations

from typing import Any

from bullwait.runtime.dispatch import Context
from bullwait.waitlist.payloads import PreferenceJob


async def calculate_preferences(payload: PreferenceJob, ctx: Context) -> dict[str, Any]:
    store = ctx.services.store
    outcome = "recalculated"
    if payload.booking_id and payload.data is not None:
        facts = dict(payload.data.to_wire(), salonId=payload.salon_id)
        folded = await store.fold_booking(payload.customer_id, payload.booking_id, facts)
        outcome = "folded" if folded else "already-folded"
    if payload.action == "recalculate":
        await store.recalculate_preferences(payload.customer_id)
        outcome = "recalculated"
    prefs = await store.preferences(payload.customer_id)
    summary = prefs.to_dict()
    summary.pop("counts")
    return {"outcome": outcome, "bookingId": payload.booking_id, **summary}
