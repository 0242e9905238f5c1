"""Where BullMQ's keys land on a cluster, and three queues on three shards.

BullMQ names every key of a queue `<prefix>:<queue>:<suffix>`; Redis hashes only the first
`{...}` of a key. With the prefix `{bull}` all three queues share the slot of `bull`, one
shard. Three queues on three shards need three hash tags, one per queue: here a prefix per
queue (`{<tag>}`), each tag chosen so its slot is on another master. A BullwaitWorker per
queue runs its jobs on its own shard. Keys per shard are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import redis
from bullmq import Queue

from bullwait.engine.bulk import NewJob, add_jobs, now_ms, stored_opts
from bullwait.engine.connection import bullmq_connection
from bullwait.engine.worker import BullwaitWorker
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QUEUE_NAMES

from helpers.cluster import ClusterSet
from helpers.reliability import eventually


def tags_on_every_master(cluster: ClusterSet, base: str, count: int) -> list[str]:
    """`count` hash-tagged prefixes `{<base>-<n>}` whose slots are on `count` different masters."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        prefix = "{" + f"{base}-{n}" + "}"
        found.setdefault(cluster.master_for(prefix), prefix)
        n += 1
    return list(found.values())


async def test_three_queues_on_three_shards(cluster: ClusterSet, csettings: Settings, prefix: str) -> None:
    names = list(QUEUE_NAMES.values())
    prefixes = tags_on_every_master(cluster, prefix, len(names))
    runs: Counter[str] = Counter()

    async def process(job: Any, token: str) -> str:
        runs[job.queue.name] += 1
        return "ok"

    queues, workers, tasks = [], [], []
    try:
        for name, queue_prefix in zip(names, prefixes):
            queue = Queue(name, {"connection": bullmq_connection(csettings), "prefix": queue_prefix})
            worker = BullwaitWorker(
                name,
                process,
                {
                    "connection": bullmq_connection(csettings),
                    "blockingConnection": bullmq_connection(csettings),
                    "prefix": queue_prefix,
                    "autorun": False,
                },
            )
            queues.append(queue)
            workers.append(worker)
            tasks.append(asyncio.ensure_future(worker.run()))
            jobs = [NewJob("j", json.dumps({"i": i}), stored_opts({}), f"{name}-{i}", now_ms()) for i in range(50)]
            await add_jobs(queue, jobs)

        async def all_done() -> bool:
            return all(runs[name] >= 50 for name in names)

        await eventually(all_done, 60, "50 jobs of each queue run")
        print("\nthree queues, three prefixes, three shards:")
        owners = set()
        for name, queue_prefix in zip(names, prefixes):
            owner = cluster.master_for(queue_prefix)
            owners.add(owner)
            client: redis.Redis = cluster.client(owner)
            try:
                keys = sum(1 for _ in client.scan_iter(match=f"{queue_prefix}:{name}:*", count=1000))
            finally:
                client.close()
            print(f"  {queue_prefix}:{name}:*  slot {cluster.slot(queue_prefix)}  master :{owner}  {keys} keys")
            assert keys > 0
        assert owners == set(cluster.masters())
    finally:
        for worker in workers:
            await worker.close()
        for task in tasks:
            task.cancel()
        for queue in queues:
            await queue.obliterate(force=True)
            await queue.close()
