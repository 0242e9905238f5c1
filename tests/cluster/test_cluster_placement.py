"""The three queues on different shards, as a deployment would configure it: an untagged
BULLMQ_PREFIX and BULLWAIT_QUEUE_NAMES=tagged, so each queue's keys hash by its own name
(`bull:{waitlist-expiry}:wait`). A `bullwait worker` subprocess runs the waitlist cascade for
SALONS salons, so every queue's jobs run; each queue's keys are on the master that owns its
name's slot, the salons' keys on every master; `stats --json` equals Node bullmq 6's
getJobCounts and getWorkers with the same settings (node-compat/lib/config.js). Keys per shard
are printed (`-s`).

Where the tags land depends on the cluster's slot layout: with masters owning equal thirds of
the slots, `{waitlist-notification}` and `{waitlist-preference-calculation}` share the first
master. As an operator would (docs/cluster.md), the test first moves the (empty) slot of one of
them to the master that holds no queue, then computes the owners rather than assuming them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.ops.migrate import TaggedNamesNotMigrated, migrate_legacy
from bullwait.runtime.services import Services, build_services
from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.catalog import TAGGED_QUEUE_NAMES, QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet, waitlist_worker
from helpers.common import WorkerProcess
from helpers.jobdata import SLOT_DETAILS
from helpers.nodecompat import node_json, node_required
from helpers.reliability import eventually

SALONS = 24


@pytest.fixture
def tenv(cenv: dict[str, str]) -> dict[str, str]:
    """The cluster env with an untagged prefix and tagged queue names."""
    return dict(cenv, BULLMQ_PREFIX=cenv["BULLMQ_PREFIX"].strip("{}") + "-placed", BULLWAIT_QUEUE_NAMES="tagged")


@pytest.fixture
def tsettings(csettings: Settings, tenv: dict[str, str]) -> Settings:
    # The test's offers last 1.5 s, so A's timer expires and B is offered the slot.
    return csettings.with_overrides(
        bullmq_prefix=tenv["BULLMQ_PREFIX"],
        bullwait_queue_names=QueueNaming.TAGGED,
        bullwait_store_prefix=tenv["BULLWAIT_STORE_PREFIX"],
        waitlist_offer_minutes=1.5 / 60,
    )


@pytest.fixture
async def services(tsettings: Settings) -> AsyncIterator[Services]:
    svc = await build_services(tsettings)
    yield svc
    await svc.close()


@pytest.fixture
def spread(cluster: ClusterSet) -> None:
    """Three queues on three masters (helpers.cluster.ClusterSet.spread)."""
    moved = cluster.spread([TAGGED_QUEUE_NAMES[key] for key in QueueKey])
    if moved:
        print(f"\n{moved}")


@pytest.fixture
def worker(spread: None, tenv: dict[str, str], api: FakeWhatsApp, tmp_path: Path) -> Iterator[WorkerProcess]:
    with waitlist_worker(tenv, api, tmp_path, "py-placed") as proc:
        yield proc


def who(salon: int, person: str) -> str:
    return f"{person}{salon}"


def phone(salon: int, person: str) -> str:
    return f"+3462{salon:05d}{'AB'.index(person)}"


async def cascade_and_book(services: Services, api: FakeWhatsApp) -> list[str]:
    """A and B join each salon; a freed slot goes to A, A's timer expires it to B, both are
    told; half the B's book (a preference job each). Returns the booking customers."""
    wl, store = services.waitlist, services.store
    assert wl is not None and store is not None
    for salon in range(SALONS):
        for person in "AB":
            await wl.join(f"salon-{salon}", who(salon, person), f"cust-{salon}-{person}", phone(salon, person))
        await wl.free_slot(f"salon-{salon}", "slot-1", SLOT_DETAILS)

    async def b_offered() -> bool:
        entries = [await store.get_entry(f"salon-{s}", who(s, "B")) for s in range(SALONS)]
        return all(e is not None and (e.state, e.slot_id) == ("notified", "slot-1") for e in entries)

    await eventually(b_offered, 60, "A's timer expired and B offered in every salon")
    await eventually(lambda: _told(api, 2 * SALONS), 60, "A and B told in every salon")
    customers = []
    for salon in range(0, SALONS, 2):
        assert (await wl.book(f"salon-{salon}", who(salon, "B"), booking_id=f"bk-{salon}")).outcome == "booked"
        customers.append(f"cust-{salon}-B")

    async def folded() -> bool:
        return all([(await store.preferences(c)).bookings == 1 for c in customers])

    await eventually(folded, 60, "preferences folded for the bookings")
    return customers


async def _told(api: FakeWhatsApp, count: int) -> bool:
    return len({r.body["to"] for r in api.received()}) >= count


@node_required[0]
@node_required[1]
async def test_tagged_queues_on_their_own_masters(
    cluster: ClusterSet, tenv: dict[str, str], services: Services, api: FakeWhatsApp, worker: WorkerProcess
) -> None:
    started = time.monotonic()
    await cascade_and_book(services, api)
    print(f"\n{SALONS} salons: cascade, messages and preferences done in {time.monotonic() - started:.1f} s")
    assert max(Counter(r.body["to"] for r in api.received()).values()) == 1, "a message went twice"

    bull, store = tenv["BULLMQ_PREFIX"], tenv["BULLWAIT_STORE_PREFIX"]
    names = {key: TAGGED_QUEUE_NAMES[key] for key in QueueKey}
    owners = {key: cluster.master_for(name) for key, name in names.items()}
    patterns = {name: f"{bull}:{name}:*" for name in names.values()}  # braces are plain in SCAN's glob
    patterns |= {"salon state": f"{store}{{salon:*", "customer prefs": f"{store}{{cust:*"}
    table = cluster.keys_per_shard(patterns)
    print(f"keys per shard (BULLMQ_PREFIX={bull}, BULLWAIT_QUEUE_NAMES=tagged):")
    for key, name in names.items():
        print(f"  {bull}:{name}:*  slot {cluster.slot(name)}  master :{owners[key]}")
    for port, counts in table.items():
        print(f"  master :{port}  " + "  ".join(f"{what} {n}" for what, n in counts.items()))
    for key, name in names.items():
        holders = [port for port, counts in table.items() if counts[name]]
        assert holders == [owners[key]], (name, holders, owners[key])
    assert len(set(owners.values())) == min(3, len(cluster.masters())), "a queue shares a master"
    assert all(counts["salon state"] > 0 for counts in table.values()), "salons on every shard"

    ours = {row["name"]: row for row in json.loads(cli(tenv, "stats", "--json"))}
    assert set(ours) == set(names.values())
    assert all(row["workers"] >= 1 for row in ours.values()), ours  # CLIENT LIST read on each queue's master
    node = node_json(tenv, "compat/inspect.js")
    for key, entry in node.items():
        row = ours[entry["name"]]
        assert entry["name"] == queue_name(QueueKey(key), services.settings)
        for state in ("waiting", "active", "completed", "failed", "delayed", "prioritized"):
            assert entry["counts"][state] == row[state], (state, entry, row)
        assert len(entry["workers"]) == row["workers"], (entry["workers"], row)
    assert ours[names[QueueKey.WAITLIST_EXPIRY]]["completed"] >= SALONS  # every A's timer ran
    assert ours[names[QueueKey.PREFERENCE_CALCULATION]]["completed"] >= SALONS // 2
    doctor = invoke_cli(tenv, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # every check ok, each queue on its master


async def test_migrate_legacy_refuses_tagged_names(tsettings: Settings) -> None:
    # It moves jobs to the plain names, where a tagged deployment's workers do not read.
    with pytest.raises(TaggedNamesNotMigrated, match="BULLWAIT_QUEUE_NAMES=current"):
        await migrate_legacy(tsettings)


def cli(env: dict[str, str], *args: str) -> str:
    result = invoke_cli(env, *args)
    assert result.returncode in (0, 1), result.stderr  # 1: a warning, the JSON is whole
    return str(result.stdout)
