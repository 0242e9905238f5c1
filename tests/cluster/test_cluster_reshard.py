"""Slots migrate under load: a `bullwait worker` subprocess (REDIS_CLUSTER_NODES only, the fake
Cloud API) runs the waitlist cascade for SALONS salons while the slot of the queues' hash tag and
the store slots of a few salons move, each to another master, key batch by key batch (CLUSTER
SETSLOT IMPORTING/MIGRATING, MIGRATE ... KEYS, SETSLOT NODE), as `redis-cli --cluster reshard`
does but for exactly the slot named. While a slot is half moved its commands meet ASK and
TRYAGAIN, after it MOVED. Nothing may be lost: every timer runs, no WhatsApp message goes twice,
no job is left active or failed. The migration's seconds and the worker's errors are printed
(`-s`), never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer, expiry_job_id, new_expiry

from helpers.cluster import ClusterSet, waitlist_worker
from helpers.common import WorkerProcess
from helpers.jobdata import SLOT_DETAILS
from helpers.reliability import eventually

SALONS = 60
MOVED_SALONS = (1, 2, 31, 32)  # two whose timers fall due mid-move, two produced mid-move


def entry(salon: int, who: str) -> str:
    return f"{who}{salon}"


def phone(salon: int, who: str) -> str:
    return f"+3462{salon:05d}{'AB'.index(who)}"


@pytest.fixture
async def services(csettings: Settings, cenv: dict[str, str]) -> AsyncIterator[Services]:
    # The test's offers last 1.5 s, so A's timers fall due while the slots move.
    svc = await build_services(
        csettings.with_overrides(bullwait_store_prefix=cenv["BULLWAIT_STORE_PREFIX"], waitlist_offer_minutes=1.5 / 60)
    )
    yield svc
    await svc.close()


@pytest.fixture
def worker(cenv: dict[str, str], api: FakeWhatsApp, tmp_path: Path) -> Iterator[WorkerProcess]:
    with waitlist_worker(cenv, api, tmp_path, "py-reshard") as proc:
        yield proc


def other_master(cluster: ClusterSet, slot: int, avoid: set[int]) -> int:
    owner = cluster.slot_owner(slot)
    candidates = [p for p in cluster.masters() if p != owner and p not in avoid]
    return candidates[0] if candidates else next(p for p in cluster.masters() if p != owner)


def salon_slot(cluster: ClusterSet, cenv: dict[str, str], salon: int) -> int:
    return cluster.slot(f"{cenv['BULLWAIT_STORE_PREFIX']}{{salon:salon-{salon}}}:waiting")


def move_slots(cluster: ClusterSet, slots: list[int], avoid: set[int]) -> list[tuple[int, int, int, float]]:
    """(slot, from, to, seconds) for each slot, moved one after the other."""
    done = []
    for slot in slots:
        old = cluster.slot_owner(slot)
        new = other_master(cluster, slot, avoid)
        done.append((slot, old, new, cluster.move_slot(slot, new)))
    return done


async def start_cascades(services: Services, salons: range, pause: float = 0.0) -> None:
    wl = services.waitlist
    assert wl is not None
    for salon in salons:
        for who in "AB":
            await wl.join(f"salon-{salon}", entry(salon, who), f"cust-{salon}-{who}", phone(salon, who))
        freed, offer = await wl.free_slot(f"salon-{salon}", "slot-1", SLOT_DETAILS)
        assert freed.next_id == entry(salon, "A") and offer is not None, freed
        await asyncio.sleep(pause)


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


def skipped_a(worker: WorkerProcess) -> int:
    """A's notifications the worker skipped because A's offer was over when they ran."""
    return sum(
        1
        for line in worker.log().splitlines()
        if "offer no longer open" in line and '"notify_A' in line and "skipped-expired" in line
    )


async def bulk_timers(producer: Producer, until: asyncio.Future[float], chunk: int = 100) -> int:
    """Far-off timers added in bulk chunks (one MULTI each) until `until` is done; how many."""
    added = 0
    while not until.done() or added == 0:
        payloads = [new_expiry(f"bulk-{added + i}", "slot-x", f"c{i}", "salon-bulk", 3_600_000) for i in range(chunk)]
        added += len(await producer.schedule_expiries(payloads, chunk))
        await asyncio.sleep(0.02)
    return added


def error_lines(worker: WorkerProcess) -> Counter[str]:
    """The worker's warnings and errors, by their first 200 characters."""
    lines = [line for line in worker.log().splitlines() if '"level": "warning"' in line or '"level": "error"' in line]
    return Counter(line[:200] for line in lines if "holds none of the catalog's queues" not in line)


async def test_slots_of_the_queues_and_of_salons_move_mid_load(
    cluster: ClusterSet, cenv: dict[str, str], services: Services, api: FakeWhatsApp, worker: WorkerProcess
) -> None:
    bull = cenv["BULLMQ_PREFIX"]
    queue_slot = cluster.slot(bull)
    queue_to = other_master(cluster, queue_slot, set())
    salon_slots = sorted({salon_slot(cluster, cenv, s) for s in MOVED_SALONS} - {queue_slot})
    half = SALONS // 2
    await start_cascades(services, range(half))
    await asyncio.sleep(1.0)  # the first half's timers fall due while the slots move
    started = time.monotonic()
    owner = cluster.client(cluster.slot_owner(queue_slot))
    queue_keys = len(owner.execute_command("CLUSTER", "GETKEYSINSLOT", queue_slot, 100_000))
    moving = asyncio.ensure_future(asyncio.to_thread(cluster.move_slot, queue_slot, queue_to))
    salon_moves, _, bulk = await asyncio.gather(
        asyncio.to_thread(move_slots, cluster, salon_slots, {queue_to}),
        start_cascades(services, range(half, SALONS), pause=0.05),
        bulk_timers(services.producer, moving),
    )
    queue_move = await moving
    print(f"\nqueues' slot {queue_slot} ({queue_keys} keys) -> :{queue_to} moved in {queue_move:.2f} s")
    print(f"{bulk} timers added in bulk chunks meanwhile")
    for slot, old, new, took in salon_moves:
        print(f"salon slot {slot} :{old} -> :{new} moved in {took:.2f} s")
    print(f"production and moves done {time.monotonic() - started:.2f} s after the first IMPORTING")
    assert cluster.slot_owner(queue_slot) == queue_to
    assert all(cluster.slot_owner(slot) == new for slot, _, new, _ in salon_moves)

    await eventually(lambda: cascaded(services), 90, "A expired and B offered in every salon after the moves")
    b_phones = {phone(s, "B").lstrip("+") for s in range(SALONS)}
    await eventually(lambda: b_phones <= set(sends(api)), 60, "B told in every salon")
    # An A whose notification ran after its 1.5 s offer was over is skipped, never told twice.
    await eventually(lambda: len(sends(api)) - SALONS + skipped_a(worker) >= SALONS, 30, "every A settled")
    counted = sends(api)
    assert [n for n, times in counted.items() if times > 1] == [], "a message went twice"
    assert len(counted) - SALONS + skipped_a(worker) == SALONS

    expiry = services.producer.queue(QueueKey.WAITLIST_EXPIRY)
    a_timers = Counter([await expiry.getJobState(expiry_job_id(entry(s, "A"))) for s in range(SALONS)])
    assert set(a_timers) <= {"completed", "unknown"}, a_timers  # every A timer ran
    b_timers = Counter([await expiry.getJobState(expiry_job_id(entry(s, "B"))) for s in range(SALONS)])
    assert b_timers == {"delayed": SALONS}, b_timers  # B's offers last a minute: none lost
    assert (await expiry.getJobCounts("delayed"))["delayed"] == SALONS + bulk, "a bulk timer lost or added twice"
    for key in QueueKey:
        counts = await services.producer.queue(key).getJobCounts("active", "wait", "failed", "paused")
        assert counts == {"active": 0, "wait": 0, "failed": 0, "paused": 0}, (key, counts)
    log = worker.log()
    print(f"A told {len(counted) - SALONS}, skipped (offer over before it ran) {skipped_a(worker)}")
    print(f"worker warnings and errors: {sum(error_lines(worker).values())}")
    for line, times in error_lines(worker).most_common(8):
        print(f"  {times} x {line}")
    assert "UNBLOCKED" not in log, "the blocking wait ended by the move is not an error"
