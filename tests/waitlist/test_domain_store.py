"""RedisWaitlistStore against the suite's real Redis: transitions, CAS races, FIFO, preferences."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from bullwait.engine.connection import redis_client
from bullwait.settings import Settings
from bullwait.waitlist.store import RedisWaitlistStore, WaitlistStore

from helpers.jobdata import SLOT_DETAILS

NOW = 1_800_000_000_000
OFFER = 15 * 60_000


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[RedisWaitlistStore]:
    s = RedisWaitlistStore(redis_client(settings), settings.bullwait_store_prefix)
    yield s
    await s.close()


async def _join(store: RedisWaitlistStore, salon: str, *ids: str) -> None:
    for i, wid in enumerate(ids):
        assert (await store.join(salon, wid, f"c-{wid}", f"+3460000{i:04d}", NOW + i)).outcome == "waiting"


async def test_redis_store_satisfies_the_protocol(store: RedisWaitlistStore) -> None:
    assert isinstance(store, WaitlistStore)


async def test_offer_goes_to_first_joined_and_cascades_fifo(store: RedisWaitlistStore) -> None:
    await _join(store, "s1", "a", "b", "c")
    freed = await store.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)
    assert (freed.outcome, freed.next_id) == ("offered", "a")
    a = await store.get_entry("s1", "a")
    assert a is not None and (a.state, a.slot_id, a.expires_at_ms) == ("notified", "slot-1", NOW + OFFER)

    early = await store.expire("s1", "a", "slot-1", NOW + OFFER - 1, NOW + 2 * OFFER)
    assert (early.outcome, early.expires_at_ms) == ("early", NOW + OFFER)
    assert (await store.get_entry("s1", "a")).state == "notified"  # type: ignore[union-attr]

    expired = await store.expire("s1", "a", "slot-1", NOW + OFFER, NOW + 2 * OFFER)
    assert (expired.outcome, expired.next_id) == ("expired", "b")
    slot = await store.get_slot("s1", "slot-1")
    assert slot is not None and (slot.state, slot.offered_to, slot.details) == ("offered", "b", SLOT_DETAILS)
    assert await store.waiting("s1") == ["c"]

    again = await store.expire("s1", "a", "slot-1", NOW + OFFER + 5, NOW + 3 * OFFER)
    assert (again.outcome, again.next_id) == ("already-expired", "b"), "a late duplicate reports, never moves"
    assert (await store.book("s1", "b", NOW + OFFER + 10)).outcome == "booked"
    assert (await store.book("s1", "b", NOW + OFFER + 11)).outcome == "already-booked"
    assert (await store.expire("s1", "b", "slot-1", NOW + 9 * OFFER, NOW + 10 * OFFER)).outcome == "already-booked"
    assert (await store.cancel("s1", "b", NOW + 9 * OFFER, NOW + 10 * OFFER)).outcome == "already-booked"
    assert (await store.get_slot("s1", "slot-1")).state == "booked"  # type: ignore[union-attr]
    assert (await store.expire("s1", "nobody", "slot-1", NOW, NOW)).outcome == "missing"


async def test_join_twice_keeps_one_entry_and_its_place(store: RedisWaitlistStore) -> None:
    await _join(store, "s1", "a", "b")
    assert (await store.join("s1", "a", "c-a", "+34600000000", NOW + 50)).outcome == "already-waiting"
    assert await store.waiting("s1") == ["a", "b"]


async def test_slot_with_nobody_waiting_stays_open_then_is_offered_on_next_free(store: RedisWaitlistStore) -> None:
    assert (await store.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)).outcome == "open"
    await _join(store, "s1", "a")
    assert (await store.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)).next_id == "a"
    assert (await store.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)).outcome == "already-offered"


async def test_cancelling_an_offer_passes_the_slot_and_cancelled_waiting_is_skipped(store: RedisWaitlistStore) -> None:
    await _join(store, "s1", "a", "b", "c")
    assert (await store.cancel("s1", "b", NOW, NOW + OFFER)).outcome == "cancelled"  # leaves the queue
    await store.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)
    declined = await store.cancel("s1", "a", NOW + 1, NOW + OFFER)
    assert (declined.outcome, declined.next_id) == ("cancelled", "c")
    assert (await store.book("s1", "a", NOW + 2)).outcome == "already-cancelled", "a cancelled entry never comes back"


async def test_concurrent_transitions_only_one_wins(store: RedisWaitlistStore, settings: Settings) -> None:
    """Many clients race every transition of one entry; exactly one changes it."""
    await _join(store, "s1", *[f"w{i}" for i in range(30)])
    others = [RedisWaitlistStore(redis_client(settings), settings.bullwait_store_prefix) for _ in range(8)]
    try:
        frees = await asyncio.gather(
            *[o.free_slot("s1", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER) for o in others for _ in range(3)]
        )
        assert Counter(f.outcome for f in frees) == {"offered": 1, "already-offered": 23}
        # Booking, cancelling and expiring w0 all at once: one wins, the rest report it.
        racers = []
        for o in others:
            racers += [
                o.book("s1", "w0", NOW + OFFER),
                o.cancel("s1", "w0", NOW + OFFER, NOW + 2 * OFFER),
                o.expire("s1", "w0", "slot-1", NOW + OFFER, NOW + 2 * OFFER),
            ]
        results = await asyncio.gather(*racers)
        winners = [r for r in results if r.changed]
        assert len(winners) == 1, [r.outcome for r in results]
        final = (await store.get_entry("s1", "w0")).state  # type: ignore[union-attr]
        assert winners[0].outcome == final
        assert all(r.outcome == f"already-{final}" for r in results if not r.changed)
        offered = [e for e in [await store.get_entry("s1", f"w{i}") for i in range(30)] if e and e.state == "notified"]
        assert len(offered) <= 1, "one slot is never offered to two customers"
    finally:
        for o in others:
            await o.close()


async def test_many_slots_freed_concurrently_never_share_a_customer(
    store: RedisWaitlistStore, settings: Settings
) -> None:
    await _join(store, "s2", *[f"w{i}" for i in range(10)])
    clients = [RedisWaitlistStore(redis_client(settings), settings.bullwait_store_prefix) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *[clients[i % 4].free_slot("s2", f"slot-{i}", SLOT_DETAILS, NOW, NOW + OFFER) for i in range(15)]
        )
    finally:
        for c in clients:
            await c.close()
    offered = [r.next_id for r in results if r.outcome == "offered"]
    assert sorted(offered) == sorted(f"w{i}" for i in range(10)), "each waiting customer gets exactly one slot"
    assert sum(r.outcome == "open" for r in results) == 5


async def test_booking_folded_twice_counts_once_and_recalculate_rebuilds(store: RedisWaitlistStore) -> None:
    facts = {"serviceId": "s-1", "masterId": "m-1", "dayOfWeek": 2, "hour": 10}
    assert await store.fold_booking("cust-1", "b-1", facts) is True
    assert await store.fold_booking("cust-1", "b-1", facts) is False
    await store.fold_booking("cust-1", "b-2", {**facts, "masterId": "m-2", "hour": 18})
    await store.fold_booking("cust-1", "b-3", {**facts, "dayOfWeek": 5, "hour": 18})
    prefs = await store.preferences("cust-1")
    assert (prefs.bookings, prefs.top_service, prefs.top_master) == (3, "s-1", "m-1")
    assert prefs.preferred_days == [2, 5] and prefs.preferred_hours == [18, 10]
    # Counts damaged (by hand, or an older version): recalculate rebuilds from bookings.
    await store.client.hset(store.customer_key("cust-1", "prefs"), "service:s-1", 99)
    assert await store.recalculate_preferences("cust-1") == 3
    assert (await store.preferences("cust-1")).services == {"s-1": 3}
    assert (await store.preferences("nobody")).bookings == 0


async def test_keys_of_one_salon_share_a_cluster_slot(store: RedisWaitlistStore, sync_redis) -> None:  # type: ignore[no-untyped-def]
    await _join(store, "salon-x", "a", "b")
    await store.free_slot("salon-x", "slot-1", SLOT_DETAILS, NOW, NOW + OFFER)
    keys = [k for k in sync_redis.scan_iter(f"{store.prefix}*salon-x*")]
    assert len(keys) >= 5
    tags = {_hash_tag(k) for k in keys}
    assert tags == {"salon:salon-x"}, keys


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first `{` and the next `}`."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


async def test_send_claims_use_redis_clock_not_the_workers(settings: Settings) -> None:
    """Worker A (clock an hour slow) claims; worker B (clock an hour fast) must see the
    claim as live, not as a dead one ("outcome unknown" would fail the send)."""
    from bullwait.waitlist.idempotency import SendRecords

    client = redis_client(settings)
    try:
        records = SendRecords(client, settings.bullwait_store_prefix)
        key = records.key("salon-skew", "w-skew", "slot")
        real = int(__import__("time").time() * 1000)
        assert (await records.claim(key, "A", real - 3_600_000, 12_000)).outcome == "claimed"
        seen = await records.claim(key, "B", real + 3_600_000, 12_000)
        assert seen.outcome == "busy", seen
    finally:
        await client.aclose()
