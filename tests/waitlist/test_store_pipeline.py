"""The waitlist store's scripts on the services' `AutoPipeline`: a worker's `check-expiry`
lookups travel on it, and a reply lost mid-call loses no transition (the call is resent
through the client and finds its own first run done)."""

from __future__ import annotations

import asyncio

from bullwait.engine.bulk import now_ms
from bullwait.runtime.runner import run_workers
from bullwait.runtime.services import build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.store import RedisWaitlistStore

from helpers.faultproxy import FaultProxy
from helpers.jobdata import SLOT_DETAILS
from helpers.reliability import eventually

SALONS = 12


def _pipelined(store: object) -> RedisWaitlistStore:
    assert isinstance(store, RedisWaitlistStore) and store.pipeline is not None, "build_services pipelines the store"
    return store


async def test_a_workers_expiry_lookups_travel_on_the_store_pipeline(settings: Settings) -> None:
    # Offers of 0.3 s: each salon's slot goes A -> B -> nobody, two check-expiry jobs per salon.
    services = await build_services(settings.with_overrides(waitlist_offer_minutes=0.3 / 60))
    store = _pipelined(services.store)
    assert services.waitlist is not None
    try:
        for s in range(SALONS):
            for i, who in enumerate((f"A{s}", f"B{s}")):  # expiry job ids are per waitlist id
                await services.waitlist.join(f"salon-{s}", who, f"cust-{who}", f"+3460000{s:03d}{i}")
            await services.waitlist.free_slot(f"salon-{s}", "slot-1", SLOT_DETAILS)
        calls_before = store.pipeline.calls  # type: ignore[union-attr]
        stop = asyncio.Event()
        workers = asyncio.ensure_future(
            run_workers(settings, services.registry, [QueueKey.WAITLIST_EXPIRY], services=services, stop=stop)
        )

        async def all_open() -> bool:
            slots = [await store.get_slot(f"salon-{s}", "slot-1") for s in range(SALONS)]
            return all(slot is not None and slot.state == "open" for slot in slots)

        try:
            await eventually(all_open, 60, "every slot passed A -> B -> nobody")
        finally:
            stop.set()
            await workers
        for s in range(SALONS):
            entries = [await store.get_entry(f"salon-{s}", who) for who in (f"A{s}", f"B{s}")]
            states = [(e.state, e.passed_to) for e in entries if e is not None]
            assert states == [("expired", f"B{s}"), ("expired", None)]
        # Each expiry (at least two per salon; an early timer sleeps and asks again) was a pipeline call.
        assert store.pipeline.calls - calls_before >= 2 * SALONS  # type: ignore[union-attr]
    finally:
        await services.close()
    assert store.pipeline._closed, "closing the services closes the store's pipeline"  # type: ignore[union-attr]


async def test_a_reply_lost_mid_call_loses_no_transition(settings: Settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    direct = await build_services(settings)
    with FaultProxy(redis_server.port) as proxy:
        proxied = await build_services(settings.with_overrides(redis_url=proxy.url()))
        store = _pipelined(proxied.store)
        try:
            now = now_ms()
            for s in range(SALONS):
                for i, who in enumerate(("A", "B", "C")):
                    await direct.store.join(f"salon-{s}", who, f"cust-{who}", f"+3460000{s:03d}{i}", now)  # type: ignore[union-attr]
                await direct.store.free_slot(f"salon-{s}", "slot-1", SLOT_DETAILS, now, now + 1000)  # type: ignore[union-attr]
            assert (await store.expire("salon-x", "nobody", "slot-1", now, now)).outcome == "missing"  # connected
            calls = store.pipeline.calls  # type: ignore[union-attr]
            # The next reply Redis sends (the pipeline's: nothing else is in flight) is cut half-way
            # and its connection closed: the scripts ran, their callers never read the answers.
            proxy.cut_mid_reply()
            later = now + 1000
            results = await asyncio.gather(
                *(store.expire(f"salon-{s}", "A", "slot-1", later, later + 1000) for s in range(SALONS))
            )
            assert proxy.counters.cuts == 1
            assert store.pipeline.calls - calls == SALONS  # type: ignore[union-attr]
            outcomes = sorted({r.outcome for r in results})
            assert "already-expired" in outcomes, "the calls whose replies were lost were resent"
            assert outcomes in (["already-expired"], ["already-expired", "expired"])
            assert all(r.next_id == "B" for r in results), "a resent call reports who got the slot"
        finally:
            await proxied.close()
    try:
        for s in range(SALONS):
            a, b, c = [await direct.store.get_entry(f"salon-{s}", who) for who in ("A", "B", "C")]  # type: ignore[union-attr]
            assert a is not None and (a.state, a.passed_to) == ("expired", "B")
            assert b is not None and (b.state, b.slot_id) == ("notified", "slot-1")
            assert c is not None and c.state == "waiting", "the slot passed on once"
            assert await direct.store.waiting(f"salon-{s}") == ["C"]  # type: ignore[union-attr]
    finally:
        await direct.close()
