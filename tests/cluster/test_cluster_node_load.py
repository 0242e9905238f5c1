"""Node as the producer under load on a Redis Cluster: one NestJS app (bullmq 6 on
ioredis.Cluster, node-compat's config) adds the NestJS module's three kinds of job for SALONS
salons in one `batch` call, and a `bullwait worker` subprocess with REDIS_CLUSTER_NODES only
runs every one of them: no failure, no retry, nothing left queued or active, each WhatsApp
offer sent exactly once. Then `bullwait stats --json` and Node's getJobCounts agree per queue,
and each queue's keys are on the master of its slot only.

Under both namings (`nenv`, tests/cluster/conftest.py): `current` (a hash-tagged prefix,
`{t...}:waitlist-expiry:*`, the three queues on one master) and `tagged`
(BULLWAIT_QUEUE_NAMES=tagged on both sides, `t...:{waitlist-expiry}:*`, each queue on a
master of its own).

The waitlist entries are the NestJS app's own (the store does not know them), so the worker
sends every offer as asked and each expiry timer ends `missing`: this test is about the jobs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.catalog import SPECS, QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet
from helpers.common import WorkerProcess
from helpers.jobdata import API_TOKEN
from helpers.nodecompat import nest, node_json, node_required, seed_booking, seed_entry, seed_slot
from helpers.reliability import eventually

pytestmark = node_required

SALONS = 60
# Short enough that every timer falls due while the test waits, long enough to be delayed first.
EXPIRY_DELAY_MS = 800
STATES = ("waiting", "active", "completed", "failed", "delayed", "prioritized")


def phone(salon: int) -> str:
    return f"+3462{salon:05d}0"


def steps() -> list[dict[str, Any]]:
    """The NestJS module's calls for every salon: a timer, an offer, a booking's preferences."""
    out: list[dict[str, Any]] = []
    for salon in range(SALONS):
        entry = seed_entry(f"load-{salon}", phone(salon), f"salon-{salon}")
        entry["customerId"] = f"cust-{salon}"
        slot = seed_slot(f"slot-{salon}")
        booking = dict(seed_booking(f"bk-{salon}"), salonId=f"salon-{salon}")
        out += [
            {
                "action": "notifyWaitlistCustomer",
                "args": {"waitlistEntry": entry, "slot": slot, "delayMs": EXPIRY_DELAY_MS},
            },
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry, "slot": slot}},
            {"action": "calculatePreferencesAfterBooking", "args": {"customerId": f"cust-{salon}", "booking": booking}},
        ]
    return out


@pytest.fixture
def worker(nenv: dict[str, str], api: FakeWhatsApp, tmp_path: Path) -> Iterator[WorkerProcess]:
    # Not `start_worker`: it starts from the single-server env, whose REDIS_URL the worker would
    # refuse next to REDIS_CLUSTER_NODES.
    env = {**nenv, **api.env(token=API_TOKEN), "BULLWAIT_WORKER_NAME": "py-cluster-load"}
    proc = WorkerProcess(env, [], tmp_path / "worker.log")
    try:
        # A cluster client maps the slots before its first command: give the three workers time.
        proc.wait_for_log("worker started", count=3, timeout=60)
        yield proc
    finally:
        proc.kill()


def outcomes(worker: WorkerProcess) -> Counter[str]:
    log = worker.log()
    return Counter({what: log.count(what) for what in ("job completed", "job failed", "job will retry", "Traceback")})


def all_done(worker: WorkerProcess, total: int) -> bool:
    seen = outcomes(worker)
    if seen["job failed"] or seen["job will retry"] or seen["Traceback"]:
        bad = [line for line in worker.log().splitlines() if "job failed" in line or "will retry" in line]
        raise AssertionError(f"{dict(seen)}; first: {(bad or ['(traceback)'])[0][:1500]}")
    return seen["job completed"] >= total


def node_counts(cenv: dict[str, str]) -> dict[str, dict[str, int]]:
    return {entry["name"]: entry["counts"] for entry in node_json(cenv, "compat/inspect.js").values()}


async def test_node_produces_for_every_salon_and_the_worker_runs_all(
    cluster: ClusterSet,
    nenv: dict[str, str],
    nsettings: Settings,
    naming: QueueNaming,
    api: FakeWhatsApp,
    worker: WorkerProcess,
) -> None:
    calls = steps()
    # Ids are per queue (BullMQ numbers each queue's jobs from 1), so count (call, id) pairs.
    added = {(call["action"], answer["jobId"]) for call, answer in zip(calls, nest(nenv, "batch", calls))}
    assert len(added) == 3 * SALONS, "one job per call, none deduplicated"
    timers = {job_id for action, job_id in added if action == "notifyWaitlistCustomer"}
    assert timers == {f"expiry_load-{s}" for s in range(SALONS)}

    await eventually(lambda: all_done(worker, len(calls)), 40, f"{len(calls)} jobs completed")
    assert outcomes(worker)["job completed"] == len(calls), outcomes(worker)
    sent = Counter(r.body["to"] for r in api.received())
    assert [to for to, times in sent.items() if times > 1] == [], "an offer went twice"
    assert set(sent) == {phone(s).lstrip("+") for s in range(SALONS)}

    node = node_counts(nenv)
    names = [queue_name(key, nsettings) for key in QueueKey]
    assert sorted(node) == sorted(names), "Node reads the queues bullwait serves"
    print(f"\n{len(calls)} NestJS jobs for {SALONS} salons run ({naming.value} names); Node's counts: {node}")
    for name, counts in node.items():
        left = {state: counts[state] for state in STATES if state != "completed" and counts[state]}
        assert left == {}, f"{name} still has {left}"
    stats = {row["name"]: row for row in json.loads(invoke_cli(nenv, "stats", "--json").stdout)}
    assert sorted(stats) == sorted(names)
    for name, counts in node.items():
        assert {s: stats[name][s] for s in STATES} == {s: counts[s] for s in STATES}, name
    # Every job completed; the completed set is then trimmed to each queue's retention count.
    kept = {queue_name(spec.key, nsettings): min(SALONS, spec.keep_completed[0]) for spec in SPECS.values()}
    assert {name: counts["completed"] for name, counts in node.items()} == kept

    # Each queue's keys on its slot's master only: one master for all three under a tagged
    # prefix, three under tagged names.
    bull = nenv["BULLMQ_PREFIX"]
    owners = {name: cluster.master_for(f"{bull}:{name}:id") for name in names}
    table = cluster.keys_per_shard({name: f"{bull}:{name}:*" for name in names})
    for port, counts in table.items():
        print(f"  master :{port}  " + "  ".join(f"{bull}:{name}:* {n}" for name, n in counts.items()))
    for name in names:
        assert [port for port, counts in table.items() if counts[name]] == [owners[name]], (name, table)
    expected_masters = 1 if naming is QueueNaming.CURRENT else min(3, len(cluster.masters()))
    assert len(set(owners.values())) == expected_masters, owners

    assert worker.terminate() == 0
    assert API_TOKEN not in worker.log()
