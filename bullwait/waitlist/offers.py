"""The waitlist flow: store transitions plus the jobs each one implies.

    waitlist = Waitlist(store, producer, settings)
    await waitlist.join("salon-1", "w-1", "cust-1", "+34600111222")
    await waitlist.free_slot("salon-1", "slot-9", details)   # offered to the first waiting
    await waitlist.book("salon-1", "w-1", booking_id="b-7")  # cancels w-1's expiry timer
    await waitlist.cancel("salon-1", "w-2")                  # declines: offer passes on

An offer (from `free_slot`, an expired timer or a declined offer) enqueues the
customer's `send-slot-available` notification (job id `notify_<waitlistId>_<slotId>`)
and schedules their expiry timer (`expiry_<waitlistId>`, due at the store's
`expiresAt`). Both ids are deterministic, so doing it twice (a retried job finishing
a cascade a crash interrupted) adds nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from bullwait.engine.bulk import now_ms
from bullwait.errors import WaitlistError
from bullwait.settings import Settings
from bullwait.waitlist.catalog import EXPIRY_JOB_ID_PREFIX
from bullwait.waitlist.payloads import E164, BookingFacts, ExpiryJob, NotificationJob, PreferenceJob, SlotDetails
from bullwait.waitlist.producer import Producer
from bullwait.waitlist.store import Transition, WaitlistStore

NOTIFY_JOB_ID_PREFIX = "notify_"


def notification_job_id(waitlist_id: str, slot_id: str) -> str:
    return f"{NOTIFY_JOB_ID_PREFIX}{waitlist_id}_{slot_id}"


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class Offer:
    """The follow-up jobs of one offer."""

    waitlist_id: str
    slot_id: str
    expires_at_ms: int
    notification_job_id: str
    expiry_job_id: str


class Waitlist:
    """Store transitions and the jobs they imply (notifications, timers, preferences)."""

    def __init__(self, store: WaitlistStore, producer: Producer, settings: Settings) -> None:
        self.store = store
        self.producer = producer
        self.settings = settings

    @property
    def offer_ms(self) -> int:
        return int(self.settings.waitlist_offer_minutes * 60_000)

    async def join(self, salon_id: str, waitlist_id: str, customer_id: str, customer_phone: str) -> Transition:
        phone = re.sub(r"[\s\-()]", "", customer_phone)
        if not E164.match(phone):
            raise WaitlistError(f"customer phone {customer_phone!r} is not E.164: write it as +34600111222")
        return await self.store.join(salon_id, waitlist_id, customer_id, phone, now_ms())

    async def free_slot(self, salon_id: str, slot_id: str, details: SlotDetails) -> tuple[Transition, Offer | None]:
        now = now_ms()
        result = await self.store.free_slot(salon_id, slot_id, details, now, now + self.offer_ms)
        # `already-offered`: a retry after a crash between the store and the producer; the
        # follow-ups are idempotent (deterministic job ids), so make sure of them.
        offer = None
        if result.outcome in ("offered", "already-offered") and result.next_id:
            offer = await self.announce(salon_id, result.next_id, only_if_slot=slot_id)
        return result, offer

    async def expire(self, salon_id: str, waitlist_id: str, slot_id: str) -> tuple[Transition, Offer | None]:
        """The expiry timer fired. On `expired` the slot passes on; on `already-expired`
        (a retry after a crash) the follow-ups of that hand-over are made sure of."""
        now = now_ms()
        result = await self.store.expire(salon_id, waitlist_id, slot_id, now, now + self.offer_ms)
        offer = None
        if result.outcome in ("expired", "already-expired", "already-cancelled") and result.next_id:
            offer = await self.announce(salon_id, result.next_id, only_if_slot=result.slot_id)
        return result, offer

    async def book(self, salon_id: str, waitlist_id: str, booking_id: str | None = None) -> Transition:
        """Take the offered slot; cancels the entry's expiry timer; with `booking_id`, queues
        the preference calculation for the booking."""
        result = await self.store.book(salon_id, waitlist_id, now_ms())
        if result.outcome in ("booked", "already-booked"):
            await self.producer.cancel_expiry_timer(waitlist_id)
        # Also on `already-booked` (a retried call): folding is idempotent per bookingId.
        if result.outcome in ("booked", "already-booked") and booking_id and result.slot_id:
            entry = await self.store.get_entry(salon_id, waitlist_id)
            slot = await self.store.get_slot(salon_id, result.slot_id)
            if entry is not None and slot is not None:
                await self.producer.queue_preferences(
                    booking_preference(entry.customer_id, booking_id, salon_id, slot.details)
                )
        return result

    async def cancel(self, salon_id: str, waitlist_id: str) -> tuple[Transition, Offer | None]:
        """Leave the waitlist or decline an offer: cancels the timer; the slot passes on."""
        now = now_ms()
        result = await self.store.cancel(salon_id, waitlist_id, now, now + self.offer_ms)
        if result.outcome in ("cancelled", "already-cancelled"):
            await self.producer.cancel_expiry_timer(waitlist_id)
        offer = None
        if result.outcome in ("cancelled", "already-cancelled") and result.next_id:
            offer = await self.announce(salon_id, result.next_id, only_if_slot=result.slot_id)
        return result, offer

    async def announce(self, salon_id: str, waitlist_id: str, only_if_slot: str | None = None) -> Offer | None:
        """Enqueue the notification and the expiry timer of an entry's current offer.

        Idempotent (deterministic job ids). Does nothing unless the entry is `notified`
        (for `only_if_slot`, when given)."""
        entry = await self.store.get_entry(salon_id, waitlist_id)
        if entry is None or entry.state != "notified" or entry.slot_id is None or entry.expires_at_ms is None:
            return None
        if only_if_slot is not None and entry.slot_id != only_if_slot:
            return None
        slot = await self.store.get_slot(salon_id, entry.slot_id)
        if slot is None:
            return None
        note = NotificationJob(
            waitlist_id=entry.id,
            customer_id=entry.customer_id,
            customer_phone=entry.customer_phone,
            salon_id=salon_id,
            slot_details=slot.details,
            slot_id=slot.id,
        )
        note_id = notification_job_id(entry.id, slot.id)
        await self.producer.send_slot_available(note, job_id=note_id)
        timer = ExpiryJob(
            waitlist_id=entry.id,
            slot_id=slot.id,
            customer_id=entry.customer_id,
            salon_id=salon_id,
            notified_at=_iso(entry.notified_at_ms or now_ms()),
            expires_at=_iso(entry.expires_at_ms),
        )
        timer_id = await self.producer.schedule_expiry(timer)
        return Offer(entry.id, slot.id, entry.expires_at_ms, note_id, timer_id or f"{EXPIRY_JOB_ID_PREFIX}{entry.id}")


def booking_preference(customer_id: str, booking_id: str, salon_id: str, details: SlotDetails) -> PreferenceJob:
    """The preference job of a booking of `details` (day of week as JS `getDay()`: Sunday 0)."""
    day = date.fromisoformat(details.date)
    return PreferenceJob(
        customer_id=customer_id,
        booking_id=booking_id,
        salon_id=salon_id,
        data=BookingFacts(
            service_id=details.service_id,
            master_id=details.master_id,
            day_of_week=(day.weekday() + 1) % 7,
            hour=int(details.time.split(":")[0]),
        ),
    )


def describe(result: Transition, offer: Offer | None = None) -> dict[str, Any]:
    """A job's return value: the outcome and the next entry offered."""
    return {
        "outcome": result.outcome,
        "waitlistId": result.waitlist_id,
        "slotId": result.slot_id,
        "nextOffered": offer.waitlist_id if offer else result.next_id,
    }
