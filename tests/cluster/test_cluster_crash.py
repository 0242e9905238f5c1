"""A master of the cluster crashes (SIGKILL) under the producer: its adds wait through the
cluster's node timeout and the replica's promotion (BULLWAIT_REDIS_RETRY_TIMEOUT), then land
on the new master; redis-py alone gives up within milliseconds. A cluster of its own: the
crash takes seconds to heal and would disturb the shared one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from bullwait.engine.connection import read_cluster, redis_client
from bullwait.ops.doctor import cluster_checks
from bullwait.settings import Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cluster import ClusterSet, cluster_env, cluster_settings


@pytest.fixture
def own_cluster() -> Iterator[ClusterSet]:
    with ClusterSet().start() as topo:
        yield topo


async def test_producer_adds_wait_through_a_crashed_master(own_cluster: ClusterSet, env: dict[str, str]) -> None:
    settings: Settings = cluster_settings(cluster_env(env, own_cluster)).with_overrides(
        bullwait_redis_retry_timeout=30.0
    )
    delayed = f"{settings.bullmq_prefix}:waitlist-expiry:delayed"
    async with Producer(settings) as producer:
        await producer.schedule_expiry(new_expiry("before", "s", "c", "salon", delay_ms=600_000))
        crash = asyncio.get_running_loop().run_in_executor(None, own_cluster.crash, delayed)
        started = time.monotonic()
        added = 0
        while not crash.done() or added < 3:
            await producer.schedule_expiry(new_expiry(f"during-{added}", "s", "c", "salon", delay_ms=600_000))
            added += 1
            await asyncio.sleep(0.05)
        old, new = await crash
        print(f"\n{added} adds across the crash of {old}; {new} promoted {time.monotonic() - started:.1f} s in")
    assert own_cluster.master_for(delayed) == new
    client = redis_client(settings)
    try:
        assert await client.zcard(delayed) == added + 1  # each add once, none lost
        # The dead node is shown, not dropped: doctor warns with it named.
        view = await read_cluster(client)
        assert view.state == "ok" and view.answering == 5 and len(view.nodes) == 6, view
        check = cluster_checks(view)[0]
        assert check.status == "warn" and f"not answering: 127.0.0.1:{old}" in check.detail, check
    finally:
        await client.aclose()
    own_cluster.restart(old)
    assert old in own_cluster.replicas_of(new)
