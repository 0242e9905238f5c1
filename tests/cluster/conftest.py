"""One Redis Cluster (3 masters, 3 replicas) for this directory's tests; each test has its own
prefix, so tests share the cluster as the rest share one redis-server. A test that fails a master
over leaves the cluster whole (the old master becomes a replica)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bullwait.settings import Settings

from helpers.cluster import ClusterSet, cluster_env, cluster_settings


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
