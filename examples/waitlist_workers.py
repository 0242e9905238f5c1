"""The waitlist workers run from your own code, with a processor of your own.

    REDIS_URL=redis://localhost:6379/0 python examples/waitlist_workers.py

What `bullwait worker` does, as a library: settings from the environment, the services
(producer, store, WhatsApp sender, limiters), the processor registry, and the three
waitlist workers until SIGTERM/SIGINT or until `stop` is set. Here your own function
replaces the built-in preference processor, and one offer goes through the workers:
a customer joins, a slot frees up (the worker sends the offer; without
WHATSAPP_ACCESS_TOKEN it is only logged), the customer books (the preference job runs
your function). Then the workers stop, letting active jobs finish.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from typing import Any

from bullwait import (
    Context,
    PreferenceJob,
    QueueKey,
    SlotDetails,
    Waitlist,
    build_services,
    configure_logging,
    load_settings,
    run_workers,
)

booked = asyncio.Event()


async def remember_preferences(payload: PreferenceJob, ctx: Context) -> dict[str, Any]:
    """Gets the job's data validated as `PreferenceJob`; `ctx` has the job, a logger bound to
    it and the services. Raising retries the job (per its attempts); an `UnrecoverableError`
    fails it at once."""
    facts = payload.data
    assert facts is not None  # `calculate` jobs always carry the booking's facts
    print(
        f"preferences of {payload.customer_id}: {facts.service_id} with {facts.master_id} at {facts.hour}h", flush=True
    )
    ctx.log.info("preferences stored", customer=payload.customer_id)
    booked.set()
    return {"stored": True}


async def one_offer(waitlist: Waitlist) -> None:
    run = uuid.uuid4().hex[:8]  # fresh ids: the store remembers every entry and slot
    salon, entry, slot_id = f"salon-{run}", f"w-{run}", f"slot-{run}"
    details = SlotDetails(
        date=(date.today() + timedelta(days=1)).isoformat(),
        time="10:00",
        master_id="master-1",
        master_name="Ana",
        service_id="service-cut",
        service_name="Haircut",
        duration=45,
        price=35.0,
    )
    await waitlist.join(salon, entry, "customer-1", "+34600111222")
    _, offer = await waitlist.free_slot(salon, slot_id, details)
    assert offer is not None  # the entry is the first (and only) one waiting
    print(f"offered {slot_id} to {offer.waitlist_id}", flush=True)
    # The notification worker sends the offer; the customer books once they have it.
    notifications = waitlist.producer.queue(QueueKey.WAITLIST_NOTIFICATION)
    while (state := await notifications.getJobState(offer.notification_job_id)) not in ("completed", "failed"):
        await asyncio.sleep(0.05)
    print(f"notification {offer.notification_job_id}: {state}", flush=True)
    result = await waitlist.book(salon, entry, booking_id=f"booking-{run}")
    print(f"booking: {result.outcome}", flush=True)


async def main() -> int:
    settings = load_settings()  # REDIS_URL, BULLMQ_PREFIX, ... (SettingsError names a bad one)
    configure_logging(settings.queue_log_level)  # JSON to stderr, phones masked, secrets dropped
    services = await build_services(settings)
    # Replaces the built-in processor of that queue and job name; register new job names the same way.
    services.registry.register(
        QueueKey.PREFERENCE_CALCULATION, "calculate-preferences", PreferenceJob, remember_preferences
    )
    stop = asyncio.Event()
    try:
        workers = asyncio.create_task(
            run_workers(settings, services.registry, services=services, observer=services.observer, stop=stop)
        )
        assert services.waitlist is not None  # build_services always makes one
        await one_offer(services.waitlist)
        await asyncio.wait_for(booked.wait(), timeout=60)
        stop.set()  # as SIGTERM would: stop fetching, let active jobs finish, close
        code = await workers
    finally:
        await services.close()
    print(f"workers stopped, exit code {code}", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
