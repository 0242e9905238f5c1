"""Demo traffic: the real waitlist flow, then a report.

Used by `bullwait demo` (`bash dev.sh demo`), against running workers:

1. `customers` (at least 3) join one salon's waitlist;
2. two slots free up: slot A is offered to customer 0, slot B to customer 1;
3. customer 1 books B as soon as the offer arrives (their timer is cancelled, a preference job queued);
4. customer 0 lets the timer run out: the expiry job expires the offer and passes A
   to customer 2 (notification and new timer, enqueued by the worker);
5. customer 2 books A (timer cancelled, preference job queued).

Every step goes through `bullwait.waitlist.offers.Waitlist`, the same API an application uses.
The offers go out through the real Cloud API client to a fake Cloud API on 127.0.0.1
(`fake_whatsapp_settings`): the demo's customers have made-up numbers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.offers import Waitlist, booking_preference, notification_job_id
from bullwait.waitlist.payloads import SlotDetails
from bullwait.waitlist.producer import expiry_job_id

MIN_CUSTOMERS = 3


@dataclass(frozen=True)
class DemoReport:
    run_id: str
    added: dict[str, int]
    completed: dict[str, int]
    failed: dict[str, int]
    seconds: float
    cancelled: dict[str, int] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    flow_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.flow_ok and self.added == self.completed and not any(self.failed.values())


def fake_whatsapp_settings(settings: Settings, api: FakeWhatsApp) -> Settings:
    """`settings` sending WhatsApp to `api` instead of whatever WHATSAPP_* name: with a real
    token configured, the demo would otherwise message its made-up numbers for real."""
    return settings.with_overrides(**{name.lower(): value for name, value in api.env(token="demo-token").items()})


def _slot(hour: int, master: int) -> SlotDetails:
    return SlotDetails(
        date=(datetime.now(UTC) + timedelta(days=1)).date().isoformat(),
        time=f"{hour:02d}:00",
        master_id=f"master-{master}",
        master_name=["Ana", "Luis", "Marta"][master % 3],
        service_id="service-cut",
        service_name="Haircut",
        duration=45,
        price=35.0,
    )


async def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def wait_processed(
    waitlist: Waitlist, ids: dict[QueueKey, list[str]], timeout: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Poll job states until every demo job finished (or `timeout`)."""
    producer = waitlist.producer
    deadline = time.monotonic() + timeout
    while True:
        completed: dict[str, int] = {}
        failed: dict[str, int] = {}
        for key, job_ids in ids.items():
            queue = producer.queue(key)
            states = [await queue.getJobState(j) for j in job_ids]
            completed[queue.name] = states.count("completed")
            failed[queue.name] = states.count("failed")
        done = sum(completed.values()) + sum(failed.values()) == sum(len(v) for v in ids.values())
        if done or time.monotonic() > deadline:
            return completed, failed
        await asyncio.sleep(0.1)


async def run_demo(waitlist: Waitlist, customers: int = 5, timeout: float = 60) -> DemoReport:
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    producer = waitlist.producer
    store = waitlist.store
    salon = f"demo-salon-{run_id}"
    people = [f"demo-{run_id}-{i}" for i in range(max(customers, MIN_CUSTOMERS))]
    for i, entry_id in enumerate(people):
        await waitlist.join(salon, entry_id, f"cust-{run_id}-{i}", f"+3460011{i:04d}")
    slot_a, slot_b = f"slot-{run_id}-A", f"slot-{run_id}-B"
    await waitlist.free_slot(salon, slot_a, _slot(10, 0))  # -> customer 0
    await waitlist.free_slot(salon, slot_b, _slot(11, 1))  # -> customer 1
    notifications = producer.queue(QueueKey.WAITLIST_NOTIFICATION)

    async def customer_1_notified() -> bool:
        return await notifications.getJobState(notification_job_id(people[1], slot_b)) in ("completed", "failed")

    await _wait_for(customer_1_notified, timeout)
    prefs = []
    await waitlist.book(salon, people[1])  # customer 1 takes B as soon as the offer arrives
    prefs.append(
        await producer.queue_preferences(
            booking_preference(f"cust-{run_id}-1", f"booking-{run_id}-1", salon, _slot(11, 1))
        )
    )

    async def customer_2_notified() -> bool:
        # Slot A passes to customer 2 when customer 0's timer runs out. Customer 2 books only
        # once the offer arrived, as customer 1 did: booking between the hand-over and the
        # worker enqueuing the offer is legitimate, and then no offer is sent at all.
        return await notifications.getJobState(notification_job_id(people[2], slot_a)) in ("completed", "failed")

    await _wait_for(customer_2_notified, timeout)
    entry_2 = await store.get_entry(salon, people[2])
    # Offered slot A (its own short timer may already have run out on a slow machine).
    flow_ok = entry_2 is not None and entry_2.slot_id == slot_a and entry_2.state != "waiting"
    if flow_ok and entry_2 is not None and entry_2.state == "notified":
        await waitlist.book(salon, people[2])
        prefs.append(
            await producer.queue_preferences(
                booking_preference(f"cust-{run_id}-2", f"booking-{run_id}-2", salon, _slot(10, 0))
            )
        )
    ids = {
        QueueKey.WAITLIST_NOTIFICATION: [
            notification_job_id(people[0], slot_a),
            notification_job_id(people[1], slot_b),
            notification_job_id(people[2], slot_a),
        ],
        QueueKey.WAITLIST_EXPIRY: [expiry_job_id(people[0])],
        QueueKey.PREFERENCE_CALCULATION: prefs,
    }
    remaining = max(1.0, timeout - (time.monotonic() - started))
    completed, failed = await wait_processed(waitlist, ids, remaining)
    expiry = producer.queue(QueueKey.WAITLIST_EXPIRY)
    cancelled = {expiry.name: sum([await expiry.getJobState(expiry_job_id(p)) == "unknown" for p in people[1:3]])}
    added = {producer.queue(k).name: len(v) for k, v in ids.items()}
    entries = []
    for entry_id in people:
        entry = await store.get_entry(salon, entry_id)
        if entry is not None:
            entries.append(
                {
                    "entry": entry_id,
                    "state": entry.state,
                    "slot": entry.slot_id or "",
                    "passed to": entry.passed_to or "",
                }
            )
    return DemoReport(run_id, added, completed, failed, time.monotonic() - started, cancelled, entries, flow_ok)


def report_rows(report: DemoReport) -> list[dict[str, Any]]:
    return [
        {
            "queue": q,
            "added": report.added[q],
            "completed": report.completed.get(q, 0),
            "failed": report.failed.get(q, 0),
            "timers cancelled": report.cancelled.get(q, 0),
        }
        for q in report.added
    ]
