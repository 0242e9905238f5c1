"""Demo traffic: a few waitlist offers, notifications and bookings, then a report.

Used by `bullwait demo` (the README's first command): it enqueues through the same
`Producer` a real application uses and waits until the workers have processed it all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from typing import Any

from bullwait.catalog import QueueKey
from bullwait.payloads import BookingFacts, NotificationJob, PreferenceJob, SlotDetails
from bullwait.producer import Producer, new_expiry


@dataclass(frozen=True)
class DemoReport:
    run_id: str
    added: dict[str, int]
    completed: dict[str, int]
    failed: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.added == self.completed and not any(self.failed.values())


def _slot(i: int) -> SlotDetails:
    return SlotDetails(
        date=(datetime.now(timezone.utc) + timedelta(days=1 + i % 7)).date().isoformat(),
        time=f"{10 + i % 8:02d}:00",
        master_id=f"master-{i % 3}",
        master_name=["Ana", "Luis", "Marta"][i % 3],
        service_id=f"service-{i % 2}",
        service_name=["Haircut", "Colour"][i % 2],
        duration=45,
        price=35.0,
    )


async def enqueue_demo(producer: Producer, run_id: str, customers: int, timer_ms: int) -> dict[QueueKey, list[str]]:
    """Offer a slot to each demo customer: a notification, an expiry timer, a booking fact."""
    ids: dict[QueueKey, list[str]] = {k: [] for k in QueueKey}
    for i in range(customers):
        waitlist_id = f"demo-{run_id}-{i}"
        customer = f"cust-{run_id}-{i}"
        salon = f"salon-{i % 2}"
        note = NotificationJob(
            waitlist_id=waitlist_id,
            customer_id=customer,
            customer_phone=f"+3460011{i:04d}",
            salon_id=salon,
            slot_details=_slot(i),
        )
        ids[QueueKey.WAITLIST_NOTIFICATION].append(await producer.send_slot_available(note))
        timer = new_expiry(waitlist_id, f"slot-{run_id}-{i}", customer, salon, delay_ms=timer_ms)
        ids[QueueKey.WAITLIST_EXPIRY].append(await producer.schedule_expiry(timer))
        pref = PreferenceJob(
            customer_id=customer,
            booking_id=f"booking-{run_id}-{i}",
            salon_id=salon,
            data=BookingFacts(service_id=f"service-{i % 2}", master_id=f"master-{i % 3}", day_of_week=2, hour=10 + i % 8),
        )
        ids[QueueKey.PREFERENCE_CALCULATION].append(await producer.queue_preferences(pref))
    return ids


async def wait_processed(
    producer: Producer, ids: dict[QueueKey, list[str]], timeout: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Poll job states until every demo job finished (or `timeout`)."""
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
        await asyncio.sleep(0.2)


async def run_demo(producer: Producer, customers: int = 5, timer_ms: int = 2000, timeout: float = 60) -> DemoReport:
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    ids = await enqueue_demo(producer, run_id, customers, timer_ms)
    completed, failed = await wait_processed(producer, ids, timeout)
    added = {producer.queue(k).name: len(v) for k, v in ids.items()}
    return DemoReport(run_id, added, completed, failed, time.monotonic() - started)


def report_rows(report: DemoReport) -> list[dict[str, Any]]:
    return [
        {"queue": q, "added": report.added[q], "completed": report.completed.get(q, 0), "failed": report.failed.get(q, 0)}
        for q in report.added
    ]
