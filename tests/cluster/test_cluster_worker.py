"""The engine on a Redis Cluster, in process: BullwaitWorker on the clients settings give
(`bullmq_connection`), completions through the auto-pipeline, bulk adds, durable writes
(WAIT on the master of each write's slot), the orphan sweep, and a `CLUSTER FAILOVER` of the
queue's master under load. Figures are printed (`-s`), never asserted."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from bullmq import Queue

from bullwait.engine.bulk import NewJob, add_jobs, now_ms, stored_opts
from bullwait.engine.connection import bullmq_connection, redis_client
from bullwait.engine.durable import Durability
from bullwait.engine.worker import BullwaitWorker, node_client_name
from bullwait.settings import Settings
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.store import RedisWaitlistStore

from helpers.cluster import ClusterSet
from helpers.reliability import eventually

QUEUE = "cluster-engine"


def worker_on(
    csettings: Settings, runs: Counter[str], name: str = "py-cluster-engine", queue: str = QUEUE, **extra: Any
) -> BullwaitWorker:
    async def process(job: Any, token: str) -> str:
        runs[job.id] += 1
        await asyncio.sleep(0.002)
        return "ok"

    return BullwaitWorker(
        queue,
        process,
        {
            "connection": bullmq_connection(csettings),
            "blockingConnection": bullmq_connection(csettings),
            "prefix": csettings.bullmq_prefix,
            "concurrency": 10,
            "autorun": False,
            "name": name,
            **extra,
        },
    )


def new_jobs(tag: str, count: int) -> list[NewJob]:
    return [NewJob("j", json.dumps({"i": i}), stored_opts({}), f"{tag}-{i}", now_ms()) for i in range(count)]


async def completed(queue: Queue) -> int:
    return int((await queue.getJobCounts("completed"))["completed"])


async def test_worker_completes_through_the_pipeline_on_the_queues_master(
    cluster: ClusterSet, csettings: Settings
) -> None:
    runs: Counter[str] = Counter()
    queue = Queue(QUEUE, {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix})
    worker = worker_on(csettings, runs)
    errors: list[str] = []
    worker.on("error", lambda err, *_a: errors.append(repr(err)))
    task = asyncio.ensure_future(worker.run())
    try:
        await add_jobs(queue, new_jobs("a", 500))
        await eventually(lambda: _at_least(queue, 500), 60, "500 jobs completed")
        assert sum(runs.values()) == 500 and max(runs.values()) == 1
        assert worker.pipeline.calls > 0, "completions went through the auto-pipeline"
        owner = cluster.master_for(csettings.bullmq_prefix)
        link = worker.pipeline._conn
        assert link is None or int(link.port) == owner, "the pipeline's connection is on the queue's master"
        names = [c["name"] for c in cluster.client(owner).client_list()]
        assert node_client_name(csettings.bullmq_prefix, QUEUE, "py-cluster-engine") in names, (
            "blocking connection there"
        )
        assert await worker.orphans.sweep() == []  # its pipeline of GETs runs on the cluster
        assert worker.failing_for() == 0.0
        print(f"\n500 jobs: {worker.pipeline.calls} completions in {worker.pipeline.writes} writes; errors {errors}")
    finally:
        await worker.close()
        task.cancel()
        await queue.close()


async def _at_least(queue: Queue, count: int) -> bool:
    return await completed(queue) >= count


async def test_durable_writes_wait_on_each_slots_master(cluster: ClusterSet, csettings: Settings, prefix: str) -> None:
    """WAIT 1 answers 1 only on the master that took the write (its replica acknowledges it):
    a WAIT sent anywhere else would count 0 and raise WriteNotDurable."""
    client = redis_client(csettings)
    store = RedisWaitlistStore(client, f"{prefix}-durable:", Durability(replicas=1, timeout_ms=2000))
    try:
        salons = [f"s{i}" for i in range(24)]
        for salon in salons:
            assert (await store.join(salon, f"w-{salon}", "c", "+34600000001", now_ms())).outcome == "waiting"
        shards = {cluster.master_for(store.salon_key(salon, "waiting")) for salon in salons}
        assert shards == set(cluster.masters())
        queue = Queue(
            QUEUE + "-durable", {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix}
        )
        try:
            ids = await add_jobs(queue, new_jobs("d", 20), Durability(replicas=1, timeout_ms=2000))
            assert len(ids) == 20
        finally:
            await queue.obliterate(force=True)
            await queue.close()
    finally:
        await store.close()


async def test_failover_of_the_queues_master_under_load(cluster: ClusterSet, csettings: Settings) -> None:
    """A CLUSTER FAILOVER loses nothing, so every job completes once. A job that fails (a
    fetch or completion cut by the move) ends the wait at once, with a diagnosis."""
    runs: Counter[str] = Counter()
    queue = Queue(QUEUE + "-failover", {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix})
    worker = worker_on(csettings, runs, "py-cluster-failover", queue.name)
    errors: list[str] = []
    failed: list[str] = []
    worker.on("error", lambda err, *_a: errors.append(f"{type(err).__name__}: {err}"[:120]))
    worker.on("failed", lambda job, err, *_a: failed.append(f"{job.id}: {type(err).__name__}: {err}"[:160]))
    task = asyncio.ensure_future(worker.run())
    total = 3000
    ids = [f"f{chunk}-{i}" for chunk in range(0, 2000, 500) for i in range(500)] + [f"after-{i}" for i in range(1000)]
    try:
        for chunk in range(0, 2000, 500):
            await add_jobs(queue, new_jobs(f"f{chunk}", 500))
        await eventually(lambda: _at_least(queue, 200), 60, "the worker under way")
        old = cluster.master_for(csettings.bullmq_prefix)
        before = sum(runs.values())
        started = time.monotonic()
        new = await asyncio.to_thread(cluster.failover, csettings.bullmq_prefix)
        switched = time.monotonic()
        await add_jobs(queue, new_jobs("after", total - 2000))  # on the new master

        async def all_completed() -> bool:
            assert not failed, f"jobs failed: {failed[:5]}"
            return await _at_least(queue, total)

        try:
            await eventually(all_completed, 120, f"{total} jobs completed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await _diagnosis(cluster, queue, worker, runs, ids, errors)}") from None
        done = time.monotonic()
        assert len(runs) == total and max(runs.values()) == 1, [j for j, n in runs.items() if n > 1][:10]
        print(
            f"\nfailover :{old} -> :{new} took {switched - started:.2f} s with {before} of {total} jobs run; "
            f"all done {done - switched:.1f} s later; pipeline links dropped for a moved slot: "
            f"{worker.pipeline.moves}, calls resent after a redirect: {worker.pipeline.redirects}; "
            f"worker errors: {Counter(errors)}"
        )
    finally:
        await worker.close()
        task.cancel()
        await queue.obliterate(force=True)
        await queue.close()


async def _diagnosis(
    cluster: ClusterSet, queue: Queue, worker: BullwaitWorker, runs: Counter[str], ids: list[str], errors: list[str]
) -> str:
    """What a failed wait needs: jobs per state, a few jobs not run and their state, the
    worker's view, and the slot's owner and migrations as each node sees them."""
    counts = await queue.getJobCounts("wait", "active", "delayed", "prioritized", "completed", "failed", "paused")
    unrun = [job_id for job_id in ids if job_id not in runs][:5]
    states = {job_id: await queue.getJobState(job_id) for job_id in unrun}
    slot = cluster.slot(queue.prefix)
    owners = {port: cluster._owner_as_seen_by(port, slot) for port in cluster._running_ports()}
    moving = {
        port: [word for word in cluster.command(port, "CLUSTER", "NODES").split() if "-<-" in word or "->-" in word]
        for port in cluster._running_ports()
    }
    return (
        f"jobs per state {counts}; {len(runs)} of {len(ids)} jobs run ({sum(runs.values())} runs), not run: {states}; "
        f"worker running={worker.running} closing={worker.closing} failing for {worker.failing_for():.1f} s "
        f"(last failure {worker.last_failure!r}); pipeline calls {worker.pipeline.calls}, links dropped "
        f"{worker.pipeline.moves}, resent {worker.pipeline.redirects}; worker errors {Counter(errors)}; "
        f"slot {slot}'s owner as each node sees it {owners}; slots importing/migrating {moving}"
    )


async def test_durable_write_follows_ask_during_a_slot_migration(
    cluster: ClusterSet, csettings: Settings, prefix: str
) -> None:
    """A salon's slot is being migrated and a send record is not on the old owner yet: the
    claim (one key) is answered ASK, runs on the importing master after ASKING, and WAIT is
    sent there too. (A script of several keys that do not all exist yet is answered TRYAGAIN
    there until the migration ends: Redis cannot run it on half-moved keys.)"""
    client = redis_client(csettings)
    records = SendRecords(client, f"{prefix}-ask:", Durability(replicas=1, timeout_ms=2000))
    key = records.key("migrating", "w-1", "slot-1")
    slot = cluster.slot(key)
    source = cluster.master_for(key)
    target = next(port for port in cluster.masters() if port != source)
    ids = {port: cluster.client(port).execute_command("CLUSTER", "MYID") for port in (source, target)}
    cluster.client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    try:
        claim = await records.claim(key, "owner-1", now_ms(), 30_000, "job-1")
        assert claim.outcome == "claimed"
        pipe = cluster.client(target).pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.hget(key, "owner")
        assert pipe.execute()[1] == "owner-1", "written on the importing master"
        assert cluster.client(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        # Finish the migration (the key is on the target already): every master learns the new owner.
        for port in cluster.masters():
            cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        cluster.wait_ok()
        await records.close()
        await client.aclose()
    assert cluster.master_for(key) == target


async def test_crash_of_the_queues_master_under_load(cluster: ClusterSet, csettings: Settings) -> None:
    """SIGKILL of the queue's master mid-load: the replica takes over after the node timeout and
    the worker goes on there. Replication is asynchronous, so a completion the dead master
    acknowledged may be lost and its job run again (counted, printed); none is lost: jobs
    active on the dead master come back through the stalled check (short locks here)."""
    runs: Counter[str] = Counter()
    queue = Queue(QUEUE + "-crash", {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix})
    worker = worker_on(csettings, runs, "py-cluster-crash", queue.name, lockDuration=5000, stalledInterval=2000)
    errors: list[str] = []
    worker.on("error", lambda err, *_a: errors.append(type(err).__name__))
    task = asyncio.ensure_future(worker.run())
    total = 3000
    old = None
    try:
        for chunk in range(0, 2000, 500):
            await add_jobs(queue, new_jobs(f"c{chunk}", 500))
        await eventually(lambda: _at_least(queue, 200), 60, "the worker under way")
        started = time.monotonic()
        old, new = await asyncio.to_thread(cluster.crash, csettings.bullmq_prefix)
        promoted = time.monotonic()
        await add_jobs(queue, new_jobs("after", total - 2000))
        await eventually(lambda: _at_least(queue, total), 180, f"{total} jobs completed")
        done = time.monotonic()
        assert set(runs) == {f"c{c}-{i}" for c in range(0, 2000, 500) for i in range(500)} | {
            f"after-{i}" for i in range(total - 2000)
        }
        twice = sum(1 for n in runs.values() if n > 1)
        print(
            f"\ncrash of :{old}, :{new} promoted {promoted - started:.1f} s later; all {total} done "
            f"{done - promoted:.1f} s after that; jobs run twice: {twice}; links dropped: "
            f"{worker.pipeline.moves}; worker errors: {Counter(errors)}"
        )
    finally:
        await worker.close()
        task.cancel()
        await queue.obliterate(force=True)
        await queue.close()
        if old is not None:
            await asyncio.to_thread(cluster.restart, old)
