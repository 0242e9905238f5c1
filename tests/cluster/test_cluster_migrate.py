"""`bullwait migrate-legacy` on a Redis Cluster: the legacy and current names share the
prefix's hash tag, so the move script's keys are on one slot; every timer moves once."""

from __future__ import annotations

import redis

import bullwait.ops.migrate as migrate
from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cluster import ClusterSet


async def test_migrate_legacy_on_a_cluster(cluster: ClusterSet, csettings: Settings) -> None:
    prefix = csettings.bullmq_prefix
    legacy = csettings.with_overrides(bullwait_queue_names=QueueNaming.LEGACY)
    async with Producer(legacy) as producer:
        for i in range(30):
            await producer.schedule_expiry(new_expiry(f"w-{i}", "s", "c", "salon", delay_ms=15 * 60_000 + i))
    sync: redis.RedisCluster = cluster.cluster_client()
    try:
        before = dict(sync.zrange(f"{prefix}:waitlist:expiry:delayed", 0, -1, withscores=True))
        assert len(before) == 30
        first = await migrate.migrate_legacy(csettings, batch=7)
        again = await migrate.migrate_legacy(csettings)
        assert (first.moved, again.moved) == (30, 0)
        after = dict(sync.zrange(f"{prefix}:waitlist-expiry:delayed", 0, -1, withscores=True))
        assert after == before
    finally:
        sync.close()
    async with Producer(csettings) as producer:
        assert (await producer.cancel_expiry_timer("w-7")).cancelled
