"""One Redis Cluster (3 masters, 3 replicas) for this directory's tests; each test has its own
prefix, so tests share the cluster as the rest share one redis-server. A test that fails a master
over leaves the cluster whole (the old master becomes a replica)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.catalog import TAGGED_QUEUE_NAMES, QueueKey

from helpers.cluster import ClusterSet, cluster_env, cluster_settings, tagged_env


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterSet]:
    with ClusterSet().start() as topo:
        yield topo


@pytest.fixture
def cenv(env: dict[str, str], cluster: ClusterSet) -> dict[str, str]:
    """The test env pointed at the cluster (REDIS_CLUSTER_NODES, a `{prefix}` hash tag)."""
    return cluster_env(env, cluster)


@pytest.fixture
def csettings(cenv: dict[str, str]) -> Settings:
    return cluster_settings(cenv)


@pytest.fixture(params=[QueueNaming.CURRENT, QueueNaming.TAGGED], ids=lambda naming: naming.value)
def naming(request: pytest.FixtureRequest) -> QueueNaming:
    """A test that takes `nenv` runs under both queue namings a cluster allows."""
    return QueueNaming(request.param)


@pytest.fixture
def nenv(cluster: ClusterSet, cenv: dict[str, str], naming: QueueNaming) -> dict[str, str]:
    """`cenv` under `naming`: current names under the `{prefix}` tag (the three queues on one
    master), or tagged names under the prefix without braces, with the cluster's slots spread
    so that each queue has a master of its own (as docs/cluster.md tells an operator to)."""
    if naming is QueueNaming.CURRENT:
        return cenv
    moved = cluster.spread([TAGGED_QUEUE_NAMES[key] for key in QueueKey])
    if moved:
        print(f"\n{moved}")
    return tagged_env(cenv)


@pytest.fixture
def nsettings(csettings: Settings, nenv: dict[str, str], naming: QueueNaming) -> Settings:
    return csettings.with_overrides(bullmq_prefix=nenv["BULLMQ_PREFIX"], bullwait_queue_names=naming)
