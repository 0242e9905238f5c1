"""The ops CLI on a Redis Cluster: stats, jobs, cancel, clean, retry, promote and doctor over
jobs in every state, as on one node; workers counted from every master; the least-privilege
ACL (set on every node) covers what the clients send there."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bullwait.ops.acl import acl_rules
from bullwait.settings import Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet
from helpers.common import BULLWAIT, LoggedProcess
from helpers.monitoring import health, listening, scrape, value
from helpers.nodecompat import node_json, node_required
from helpers.ops_states import populate


@pytest.fixture
def csync(cluster: ClusterSet) -> Iterator[redis.RedisCluster]:
    client = cluster.cluster_client()
    yield client
    client.close()


def cli_json(env: dict[str, str], *args: str) -> object:
    result = invoke_cli(env, *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


async def test_commands_on_every_state(cenv: dict[str, str], csettings: Settings, csync: redis.RedisCluster) -> None:
    pop = await populate(csettings, csync)
    stats = {row["name"]: row for row in cli_json(cenv, "stats")}  # type: ignore[union-attr]
    expiry = stats[pop.expiry]
    for state, count in pop.counts.items():
        assert expiry[state] == count, (state, expiry)
    assert stats[pop.notification]["paused"] is True

    listed = cli_json(cenv, "jobs", "list", pop.expiry, "--status", "delayed")
    assert {job["id"] for job in listed} >= set(pop.ids["delayed"])  # type: ignore[union-attr]

    result = invoke_cli(cenv, "cancel", "delay-0")
    assert result.returncode == 0 and "cancelled the expiry timer" in result.stdout, result
    assert invoke_cli(cenv, "cancel", "active-0").returncode == 1

    result = invoke_cli(cenv, "retry", "--queue", pop.expiry, "--yes")
    assert result.returncode == 0, result.stderr
    result = invoke_cli(cenv, "clean", "--queue", pop.expiry, "--status", "completed", "--grace", "0s")
    assert result.returncode == 0, result.stderr
    result = invoke_cli(cenv, "promote", "--queue", pop.expiry)
    assert result.returncode == 0, result.stderr
    after = {row["name"]: row for row in cli_json(cenv, "stats")}[pop.expiry]  # type: ignore[union-attr]
    assert (after["failed"], after["completed"], after["delayed"]) == (0, 0, 0), after
    # waiting + prioritized before, the 3 retried, the 4 delayed left after the cancel and the overdue one
    assert after["waiting"] + after["prioritized"] == 4 + 2 + 3 + 5, after


def test_workers_are_counted_on_the_master_that_has_them(
    cluster: ClusterSet, cenv: dict[str, str], csettings: Settings
) -> None:
    """Workers connect to the master of their queue's slot, not to the default node `stats`
    asks: CLIENT LIST is read from every master, and the master with the most of the queue's
    workers counts (a worker named on several masters counts once), as Node's getWorkers."""
    queue = "waitlist-expiry"
    owner = cluster.master_for(f"{csettings.bullmq_prefix}:{queue}:marker")
    others = [port for port in cluster.masters() if port != owner]
    names = {owner: ["a", "b"], others[0]: ["a"], others[1]: []}
    conns = []
    try:
        for port, workers in names.items():
            for worker in workers:
                conn = redis.Redis(port=port)
                conn.client_setname(f"{csettings.bullmq_prefix}:{queue}:w:{worker}")
                conns.append(conn)
        row = {r["name"]: r for r in cli_json(cenv, "stats")}[queue]  # type: ignore[union-attr]
        assert row["workers"] == 2, row
    finally:
        for conn in conns:
            conn.close()


def test_doctor_shows_the_cluster(cenv: dict[str, str]) -> None:
    result = invoke_cli(cenv, "doctor")
    # exit 1: warnings only (no worker serves the queues here)
    assert result.returncode == 1 and not result.stdout.startswith("fail"), (result.stdout, result.stderr)
    assert "\nfail " not in result.stdout, result.stdout
    assert "6/6 nodes answering (3 masters, 3 replicas), cluster_state ok, slots ok 16384/16384" in result.stdout
    assert "maxmemory-policy" in result.stdout and "every master (3): noeviction" in result.stdout


async def test_least_privilege_acl_on_every_node(
    cluster: ClusterSet, cenv: dict[str, str], csettings: Settings, csync: redis.RedisCluster
) -> None:
    user, password = f"u{csettings.bullmq_prefix.strip('{}')}", "acl-pw-1"
    rules = acl_rules(csettings.bullmq_prefix, f"{csettings.bullmq_prefix}-store:", cluster=True).split()
    for port in cluster.ports:
        node = cluster.client(port)
        node.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
        node.execute_command("ACL", "LOG", "RESET")
    pop = await populate(csettings, csync)
    env = dict(cenv, REDIS_USERNAME=user, REDIS_PASSWORD=password)
    try:
        for args in (
            ["stats", "--json"],
            ["doctor"],
            ["jobs", "list", pop.expiry, "--status", "failed"],
            ["cancel", "wait-0"],
            ["retry", "--queue", pop.expiry, "--yes"],
        ):
            result = invoke_cli(env, *args)
            if args == ["doctor"]:  # it fails the stalled and overdue jobs populate wrote, not Redis
                assert "ok    cluster" in result.stdout and "permission" not in result.stdout, result.stdout
            else:
                assert result.returncode == 0, (args, result.stdout, result.stderr)
        refused = {port: cluster.client(port).execute_command("ACL", "LOG") for port in cluster.ports}
        # doctor's CONFIG GET is refused on purpose (it reports the limit as unknown), as on one node
        refused = {p: [e for e in log if e["object"] != "config|get"] for p, log in refused.items()}
        assert not any(refused.values()), refused
    finally:
        for port in cluster.ports:
            cluster.client(port).execute_command("ACL", "DELUSER", user)


@node_required[0]
@node_required[1]
async def test_stats_equal_node_job_counts(
    cluster: ClusterSet, cenv: dict[str, str], csettings: Settings, csync: redis.RedisCluster
) -> None:
    """Node bullmq 6 on ioredis.Cluster (node-compat's config) reads the same counts and workers."""
    await populate(csettings, csync)
    conns = []
    try:
        # Node bullmq's names for its workers' connections (the queue name in base64): two on
        # one master, one on another.
        node_name = f"{csettings.bullmq_prefix}:{base64.b64encode(b'waitlist-expiry').decode()}"
        first, second = cluster.masters()[:2]
        for port, worker in ((first, "seen-0"), (first, "seen-1"), (second, "seen-2")):
            conn = redis.Redis(port=port)
            conn.client_setname(f"{node_name}:w:{worker}")
            conns.append(conn)
        node = node_json(cenv, "compat/inspect.js")
        ours = {row["name"]: row for row in cli_json(cenv, "stats")}  # type: ignore[union-attr]
    finally:
        for conn in conns:
            conn.close()
    for entry in node.values():
        row = ours[entry["name"]]
        for state in ("waiting", "active", "completed", "failed", "delayed", "prioritized"):
            assert entry["counts"][state] == row[state], (state, entry, row)
    expiry = next(e for e in node.values() if e["name"] == "waitlist-expiry")
    assert len(expiry["workers"]) == ours["waitlist-expiry"]["workers"] == 2


async def test_commands_after_a_failover_of_the_queues_master(
    cluster: ClusterSet, cenv: dict[str, str], csettings: Settings
) -> None:
    """The clients read the slot map afresh: a seed that is now a replica, or a master that is
    gone, still leads to the queue's new master."""
    async with Producer(csettings) as producer:
        for i in range(3):
            await producer.schedule_expiry(new_expiry(f"f-{i}", "s", "c", "salon", delay_ms=15 * 60_000))
    queue_key = f"{csettings.bullmq_prefix}:waitlist-expiry:delayed"
    old = cluster.master_for(queue_key)
    new = cluster.failover(queue_key)
    # The old master first in the seeds: it answers as a replica now.
    seeds = ",".join(f"127.0.0.1:{port}" for port in [old, *[p for p in cluster.ports if p != old]])
    env = dict(cenv, REDIS_CLUSTER_NODES=seeds)
    row = {r["name"]: r for r in cli_json(env, "stats")}["waitlist-expiry"]  # type: ignore[union-attr]
    assert row["delayed"] == 3, row
    result = invoke_cli(env, "cancel", "f-1")
    assert result.returncode == 0 and "cancelled the expiry timer" in result.stdout, result
    assert cluster.client(new).zcard(queue_key) == 2


def test_stats_table_shows_the_cluster(cenv: dict[str, str]) -> None:
    result = invoke_cli(dict(cenv, COLUMNS="200"), "stats")
    assert result.returncode == 0, result.stderr
    assert "Redis Cluster: 6/6 nodes answering (3 masters, 3 replicas), cluster_state ok" in result.stdout
    assert result.stdout.startswith("Redis cluster://127.0.0.1:")


async def test_metrics_and_health_on_a_cluster(
    cluster: ClusterSet, cenv: dict[str, str], csettings: Settings, tmp_path: Path
) -> None:
    """`bullwait serve` reads the queues and the workers (every master's CLIENT LIST) on a cluster."""
    async with Producer(csettings) as producer:
        await producer.schedule_expiry(new_expiry("m-1", "s", "c", "salon", delay_ms=600_000))
    queue = "waitlist-expiry"
    owner = cluster.master_for(f"{csettings.bullmq_prefix}:{queue}:marker")
    worker_conn = redis.Redis(port=owner)
    worker_conn.client_setname(f"{csettings.bullmq_prefix}:{queue}:w:metrics-1")
    serve = LoggedProcess([*BULLWAIT, "serve"], dict(cenv, METRICS_PORT="0"), tmp_path / "serve.log")
    try:
        port = int(listening(serve.wait_for_log("monitoring server listening"))["port"])
        samples = scrape(port)
        assert value(samples, "bullmq_redis_up") == 1
        assert value(samples, "bullmq_job_count", queue=queue, state="delayed") == 1
        assert value(samples, "bullmq_queue_workers", queue=queue) == 1
        status, doc = health(port)
        assert [q["name"] for q in doc["queues"]] == [
            "waitlist-expiry",
            "waitlist-notification",
            "waitlist-preference-calculation",
        ], (status, doc)
    finally:
        serve.kill()
        worker_conn.close()
