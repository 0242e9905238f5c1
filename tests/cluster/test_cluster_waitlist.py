"""The waitlist on a Redis Cluster, end to end: a `bullwait worker` subprocess with
REDIS_CLUSTER_NODES only, the fake Cloud API, and the application side (`Waitlist`, the
Producer) in the test process on a `RedisCluster` too.

For SALONS salons, whose keys spread over every shard: A and B join, a slot is freed (offered
to A for 1.5 s), A's timer expires it and offers it to B, both are told; half the B's book,
which queues a preference job. So the three queues' jobs run, and every store, send-record and
limiter script runs on every shard. Keys per shard are printed (`-s`).

The second test fails the master that owns the queues' slot over (`CLUSTER FAILOVER`) while
the timers are due: every timer still runs, no message goes twice. Seconds are printed, never
asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.engine.connection import redis_client
from bullwait.engine.durable import Durability
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.producer import expiry_job_id
from bullwait.waitlist.ratelimit import GlobalSendLimiter, SalonRateLimiter
from bullwait.waitlist.store import RedisWaitlistStore

from helpers.cluster import ClusterSet, waitlist_worker
from helpers.common import WorkerProcess
from helpers.jobdata import SLOT_DETAILS
from helpers.reliability import eventually

SALONS = 60


def entry(salon: int, who: str) -> str:
    """Waitlist ids are unique across salons (timer job ids are made from them)."""
    return f"{who}{salon}"


def phone(salon: int, who: str) -> str:
    return f"+3461{salon:05d}{'AB'.index(who)}"


@pytest.fixture
def wsettings(csettings: Settings, cenv: dict[str, str]) -> Settings:
    # Offers the test makes last 1.5 s; the worker's (B's) last a minute, so the cascade stops at B.
    return csettings.with_overrides(
        bullwait_store_prefix=cenv["BULLWAIT_STORE_PREFIX"], waitlist_offer_minutes=1.5 / 60
    )


@pytest.fixture
async def services(wsettings: Settings) -> AsyncIterator[Services]:
    svc = await build_services(wsettings)
    yield svc
    await svc.close()


@pytest.fixture
def worker(cenv: dict[str, str], api: FakeWhatsApp, tmp_path: Path) -> Iterator[WorkerProcess]:
    with waitlist_worker(cenv, api, tmp_path, "py-cluster") as proc:
        yield proc


async def start_cascades(services: Services, salons: range = range(SALONS)) -> None:
    wl = services.waitlist
    assert wl is not None
    for salon in salons:
        for who in "AB":
            await wl.join(f"salon-{salon}", entry(salon, who), f"cust-{salon}-{who}", phone(salon, who))
        freed, offer = await wl.free_slot(f"salon-{salon}", "slot-1", SLOT_DETAILS)
        assert freed.next_id == entry(salon, "A") and offer is not None, freed


async def cascaded(services: Services) -> bool:
    """Every salon: A's offer expired, B holds the slot."""
    store = services.store
    assert store is not None
    for salon in range(SALONS):
        a = await store.get_entry(f"salon-{salon}", entry(salon, "A"))
        b = await store.get_entry(f"salon-{salon}", entry(salon, "B"))
        if a is None or b is None or a.state != "expired" or (b.state, b.slot_id) != ("notified", "slot-1"):
            return False
    return True


def sends(api: FakeWhatsApp) -> Counter[str]:
    return Counter(r.body["to"] for r in api.received())


async def all_told(api: FakeWhatsApp, worker: WorkerProcess) -> bool:
    if len(sends(api)) >= 2 * SALONS:
        return True
    if "job failed" in worker.log():
        failed = [line for line in worker.log().splitlines() if "job failed" in line]
        raise AssertionError(f"{len(failed)} jobs failed, first: {failed[0][:1500]}")
    return False


def skipped_a(worker: WorkerProcess) -> list[str]:
    """A's notifications the worker skipped because A's offer was over when they ran."""
    return [
        line
        for line in worker.log().splitlines()
        if "offer no longer open" in line and '"notify_A' in line and "skipped-expired" in line
    ]


def keys_per_shard(cluster: ClusterSet, patterns: dict[str, str]) -> dict[int, dict[str, int]]:
    """Master port -> {what: keys matching its pattern on that master}."""
    table: dict[int, dict[str, int]] = {}
    for port in cluster.masters():
        client: redis.Redis = cluster.client(port)
        try:
            table[port] = {
                what: sum(1 for _ in client.scan_iter(match=pattern, count=1000)) for what, pattern in patterns.items()
            }
        finally:
            client.close()
    return table


def print_shards(cluster: ClusterSet, cenv: dict[str, str]) -> dict[int, dict[str, int]]:
    store, bull = cenv["BULLWAIT_STORE_PREFIX"], cenv["BULLMQ_PREFIX"]
    patterns = {
        "salon state": f"{store}{{salon:*",
        "send records": f"{store}{{salon:*:sent:*",
        "customer prefs": f"{store}{{cust:*",
        "queues": f"{bull}:*",
    }
    table = keys_per_shard(cluster, patterns)
    print(f"\nkeys per shard ({SALONS} salons; queue prefix {bull}, slot {cluster.slot(bull)}):")
    for port, counts in table.items():
        print(f"  master :{port}  " + "  ".join(f"{what} {n}" for what, n in counts.items()))
    return table


async def book_half(services: Services) -> list[str]:
    wl = services.waitlist
    assert wl is not None
    customers = []
    for salon in range(0, SALONS, 2):
        booked = await wl.book(f"salon-{salon}", entry(salon, "B"), booking_id=f"bk-{salon}")
        assert booked.outcome == "booked", booked
        customers.append(f"cust-{salon}-B")
    return customers


async def preferences_folded(services: Services, customers: list[str]) -> bool:
    store = services.store
    assert store is not None
    return all([(await store.preferences(c)).bookings == 1 for c in customers])


async def test_three_queues_and_the_cascade_on_every_shard(
    cluster: ClusterSet, cenv: dict[str, str], services: Services, api: FakeWhatsApp, worker: WorkerProcess
) -> None:
    started = time.monotonic()
    await start_cascades(services)
    await eventually(lambda: cascaded(services), 60, "A expired and B offered in every salon")
    await eventually(lambda: all_told(api, worker), 60, "A and B told in every salon")
    took = time.monotonic() - started
    print(f"\n{SALONS} salons: cascade done and {2 * SALONS} messages sent {took:.1f} s after the first join")
    customers = await book_half(services)
    await eventually(lambda: preferences_folded(services, customers), 60, "preferences folded for the bookings")
    counted = sends(api)
    assert [n for n, times in counted.items() if times > 1] == [], "a message went twice"
    assert set(counted) == {phone(s, w).lstrip("+") for s in range(SALONS) for w in "AB"}
    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    b_timers = Counter([await expiry.getJobState(expiry_job_id(entry(s, "B"))) for s in range(SALONS)])
    assert b_timers == {"unknown": SALONS // 2, "delayed": SALONS - SALONS // 2}, b_timers  # booking cancels
    table = print_shards(cluster, cenv)
    assert all(counts["salon state"] > 0 for counts in table.values()), "salons on every shard"
    assert all(counts["send records"] > 0 for counts in table.values()), "send records on every shard"
    owner = cluster.master_for(cenv["BULLMQ_PREFIX"])
    assert [port for port, counts in table.items() if counts["queues"]] == [owner], (
        "every queue key in the prefix's slot"
    )


async def test_failover_of_the_queues_master_mid_load(
    cluster: ClusterSet, cenv: dict[str, str], services: Services, api: FakeWhatsApp, worker: WorkerProcess
) -> None:
    bull = cenv["BULLMQ_PREFIX"]
    old = cluster.master_for(bull)
    # The first half's timers fall due (1.5 s offers) while the master moves and the second
    # half is produced: fetches, completions, adds and the blocking wait all meet the move.
    half = SALONS // 2
    await start_cascades(services, range(half))
    await asyncio.sleep(1.0)
    moved_at = time.monotonic()
    new, _ = await asyncio.gather(
        asyncio.to_thread(cluster.failover, bull), start_cascades(services, range(half, SALONS))
    )
    moved = time.monotonic()
    print(f"\nCLUSTER FAILOVER of the queues' master :{old} -> :{new} took {moved - moved_at:.2f} s")
    await eventually(lambda: cascaded(services), 90, "A expired and B offered in every salon after the failover")
    cascade_done = time.monotonic()
    # B's offers last a minute: every B is told. An A whose notification the move delayed past
    # its 1.5 s offer is not told (the worker skips offers no longer open), never told twice.
    b_phones = {phone(s, "B").lstrip("+") for s in range(SALONS)}
    await eventually(lambda: b_phones <= set(sends(api)), 60, "B told in every salon")
    print(f"every timer ran and offered on {cascade_done - moved:.1f} s after the failover completed")
    assert cluster.master_for(bull) == new
    # A fetch whose reply the move lost is given back by the worker's orphan sweep (seconds).
    await eventually(lambda: len(sends(api)) - SALONS + len(skipped_a(worker)) >= SALONS, 30, "every A settled")
    counted = sends(api)
    assert [n for n, times in counted.items() if times > 1] == [], "a message went twice"
    a_told = len(counted) - SALONS
    given_back = worker.log().count("jobs fetched without a reply given back")
    print(f"A told {a_told}, skipped (offer over before it ran) {len(skipped_a(worker))}; orphan lines {given_back}")
    assert a_told + len(skipped_a(worker)) == SALONS
    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    states = Counter([await expiry.getJobState(expiry_job_id(entry(s, "A"))) for s in range(SALONS)])
    assert set(states) <= {"completed", "unknown"}, states  # every A timer ran (kept, or removed by retention)
    log = worker.log()
    print(f"worker log lines mentioning errors after the failover: {log.count('worker error')}")
    assert "UNBLOCKED" not in log, "the blocking wait ended by the move is not an error"
    print_shards(cluster, cenv)


async def test_every_store_script_on_every_shard_durably(cluster: ClusterSet, csettings: Settings, prefix: str) -> None:
    """Each store transition, the preference scripts, send records and both send windows, for
    salons and customers on every shard, each write confirmed by WAIT 1 on its own master."""
    durable = Durability(replicas=1, timeout_ms=2000)
    client = redis_client(csettings)
    store = RedisWaitlistStore(redis_client(csettings), f"{prefix}-all:", durable)
    records = SendRecords(client, f"{prefix}-all:", durable)
    salons = SalonRateLimiter(client, f"{prefix}-all:", 5, 60_000)
    whatsapp = GlobalSendLimiter(client, f"{prefix}-all:", "pn-1", 80)
    now = int(time.time() * 1000)
    try:
        shards = set()
        for n in range(24):
            salon = f"s{n}"
            shards.add(cluster.master_for(store.salon_key(salon, "waiting")))
            for who in ("a", "b", "c"):
                assert (await store.join(salon, f"{who}{n}", f"c{n}{who}", "+34600000001", now)).outcome == "waiting"
            assert (await store.free_slot(salon, "x", SLOT_DETAILS, now, now - 1)).next_id == f"a{n}"
            assert (await store.expire(salon, f"a{n}", "x", now, now + 60_000)).next_id == f"b{n}"
            assert (await store.cancel(salon, f"b{n}", now, now + 60_000)).next_id == f"c{n}"
            assert (await store.book(salon, f"c{n}", now)).outcome == "booked"
            assert await store.fold_booking(
                f"c{n}c", f"bk{n}", {"serviceId": "s", "masterId": "m", "dayOfWeek": 1, "hour": 9}
            )
            assert await store.recalculate_preferences(f"c{n}c") == 1
            key = records.key(salon, f"c{n}", "x")
            assert (await records.claim(key, "o", now, 30_000, "j")).outcome == "claimed"
            assert await records.record_sent(key, "o", "wamid-1", now)
            assert (await salons.acquire(salon, f"m{n}")).allowed
            await salons.stamp(salon, f"m{n}")
            assert await salons.in_window(salon) == 1
            await salons.release(salon, f"m{n}")
        assert (await whatsapp.acquire("m")).allowed
        assert shards == set(cluster.masters())
    finally:
        await records.close()
        await store.close()
        await client.aclose()
