"""Connections to a Redis Cluster built from settings: bullwait's own client and bullmq's
reach keys on every shard; check_redis describes the cluster; a one-node address that names
a cluster node is refused in one line."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from bullmq import Queue
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from bullwait.engine.connection import (
    _cluster_retryable,
    bullmq_connection,
    check_redis,
    cluster_client,
    cluster_redirect,
    describe_redis,
    read_cluster,
    redis_client,
    redis_options,
)
from bullwait.errors import RedisIsClusterNode, RedisUnavailable
from bullwait.settings import Settings

from helpers.cluster import ClusterSet


async def test_own_client_reaches_keys_on_every_shard(cluster: ClusterSet, csettings: Settings, prefix: str) -> None:
    client = redis_client(csettings)
    assert isinstance(client, RedisCluster)
    try:
        keys = [f"{prefix}:{{salon-{i}}}" for i in range(30)]
        for key in keys:
            await client.set(key, key)
        assert [await client.get(key) for key in keys] == keys  # decoded, as with one node
        assert {cluster.master_for(key) for key in keys} == set(cluster.masters())
    finally:
        await client.aclose()


async def test_bullmq_queue_on_the_cluster(cluster: ClusterSet, csettings: Settings) -> None:
    connection = bullmq_connection(csettings)
    assert isinstance(connection, RedisCluster)
    queue = Queue("cluster-conn", {"connection": connection, "prefix": csettings.bullmq_prefix})
    try:
        await queue.add("job", {"n": 1})
        await queue.add("later", {"n": 2}, {"delay": 60_000})
        counts = await queue.getJobCounts("waiting", "delayed")
        assert counts == {"waiting": 1, "delayed": 1}
        key = f"{csettings.bullmq_prefix}:cluster-conn:wait"
        assert cluster.client(cluster.master_for(key)).llen(key) == 1
        await queue.obliterate({"force": True})
    finally:
        await queue.close()


# Counts its runs, then keeps its node busy for ARGV[1] microseconds: its reply comes late.
SLOW_COUNT = """
local runs = redis.call('INCR', KEYS[1])
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])
return runs
"""


async def test_a_slot_map_reset_leaves_commands_in_flight_alone(
    cluster: ClusterSet, csettings: Settings, prefix: str
) -> None:
    """redis-py resets a cluster client's slot map by closing the client (after MOVED replies,
    CLUSTERDOWN, a slot not covered), which cut every command other tasks had in flight on
    any node: after a failover a worker's completion failed ("'NoneType' object has no
    attribute 'writelines'", its job failed) or lost its reply after it ran and was sent again
    ("Missing lock"). Here a MOVED on one master resets the map while a script is running
    on another: the script runs once and its reply arrives."""
    client = cluster_client(csettings, reinitialize_steps=1)  # every MOVED resets (by default every 5th)
    counted = f"{prefix}:{{counted}}"
    busy = cluster.master_for(counted)
    moved = next(k for i in range(100) if cluster.master_for(k := f"{prefix}:{{moved-{i}}}") != busy)
    try:
        await client.set(moved, "before")  # the client has read the slot map
        slot = cluster.slot(moved)
        target = next(p for p in cluster.masters() if p not in (busy, cluster.slot_owner(slot)))
        await asyncio.to_thread(cluster.move_slot, slot, target)  # the client's map is stale for it
        slow = asyncio.ensure_future(client.eval(SLOW_COUNT, 1, counted, 1_000_000))
        await asyncio.sleep(0.2)  # the script is running on its master
        await client.set(moved, "after")  # MOVED: the map is reset
        assert await slow == 1, "the script ran once, its reply read"
        assert await client.get(counted) == "1"
        assert await client.get(moved) == "after"
        assert cluster.client(target).get(moved) == "after"
    finally:
        await client.aclose()


async def test_check_redis_describes_the_cluster(csettings: Settings) -> None:
    version = await check_redis(csettings)
    assert version[0].isdigit()
    assert describe_redis(csettings).startswith("cluster://127.0.0.1:")
    client = redis_client(csettings)
    try:
        view = await read_cluster(client)
    finally:
        await client.aclose()
    line = view.summary()
    assert "6/6 nodes answering (3 masters, 3 replicas), cluster_state ok, slots ok 16384/16384" in line, line


async def test_check_redis_on_seed_nodes_that_are_all_down(csettings: Settings) -> None:
    down = csettings.with_overrides(redis_cluster_nodes="127.0.0.1:1", redis_connect_timeout=0.5)
    with pytest.raises(RedisUnavailable) as err:
        await check_redis(down)
    assert "REDIS_CLUSTER_NODES" in str(err.value) and "\n" not in str(err.value)


async def test_one_node_url_at_a_cluster_node_is_named_for_what_it_is(cluster: ClusterSet) -> None:
    port = cluster.masters()[0]
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(RedisIsClusterNode) as err:
        await check_redis(settings)
    message = str(err.value)
    assert f"is a cluster node: set REDIS_CLUSTER_NODES=127.0.0.1:{port}" in message and "\n" not in message
    assert err.value.exit_code == 2
    # A key command's MOVED from such a node reads the same.
    client = redis_client(settings)
    try:
        moved = None
        for i in range(20):
            try:
                await client.get(f"{{k{i}}}")
            except Exception as exc:  # the first key of another shard
                moved = exc
                break
    finally:
        await client.aclose()
    assert moved is not None and str(moved)[0].isdigit()  # redis-py's bare "9263 127.0.0.1:7201"
    assert isinstance(cluster_redirect(settings, moved), RedisIsClusterNode)


async def test_credentials_tls_and_timeouts_reach_every_node_connection(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made\n")
    settings = Settings(
        redis_cluster_nodes="127.0.0.1:1,[::1]:2",
        redis_username="app",
        redis_password="node-secret",
        redis_tls_ca_file=str(ca),
        redis_connect_timeout=1.5,
    )
    with pytest.raises(RuntimeError):
        redis_options(settings)  # names one node: no code path may build a plain client by accident
    for client in (redis_client(settings), bullmq_connection(settings)):
        assert isinstance(client, RedisCluster)
        kwargs = client.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("app", "node-secret")
        assert kwargs["connection_class"] is SSLConnection and kwargs["ssl_ca_certs"] == str(ca)
        assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert kwargs["socket_connect_timeout"] == 1.5 and kwargs["decode_responses"] is True
        await client.aclose()
    assert describe_redis(settings) == "cluster://127.0.0.1:1,[::1]:2"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (RedisConnectionError("Error 111 connecting"), True),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (SlotNotCoveredError("slot 5 not covered"), True),
        (RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"), True),
        (ClusterError("TTL exhausted."), True),  # every try refused (ASK, TRYAGAIN) mid-migration
        (ClusterError("something else"), False),
        (AuthenticationError("WRONGPASS"), False),
        (RedisClusterException("EVALSHA - all keys must map to the same key slot"), False),
    ],
)
def test_what_a_cluster_client_retries_through_a_failover(exc: Exception, retried: bool) -> None:
    assert _cluster_retryable(exc) is retried
