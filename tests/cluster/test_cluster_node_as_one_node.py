"""A one-node address (REDIS_URL) that names a Redis Cluster node: the worker, every command,
doctor and the health endpoint say so in one line, with the REDIS_CLUSTER_NODES to set,
instead of failing on MOVED replies (or blaming ACLs) in a loop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from redis.exceptions import ClusterCrossSlotError, MovedError, ResponseError

from bullwait.dev.embedded import RedisServer
from bullwait.engine.connection import cluster_reply_message

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet
from helpers.common import BULLWAIT, ROOT, LoggedProcess, wait_until
from helpers.monitoring import health, listening


@pytest.fixture
def node_env(env: dict[str, str], cluster: ClusterSet) -> dict[str, str]:
    return dict(env, REDIS_URL=f"redis://127.0.0.1:{cluster.masters()[0]}/0")


def said_cluster_node(text: str, port: int) -> bool:
    return f"is a cluster node: set REDIS_CLUSTER_NODES=127.0.0.1:{port}" in text


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--json"],
        ["jobs", "list", "waitlist-expiry", "--status", "delayed"],
        ["cancel", "w-1"],
        ["clean", "--queue", "waitlist-expiry", "--status", "completed"],
        ["retry", "--queue", "waitlist-expiry", "--yes"],
        ["doctor"],
    ],
)
def test_commands_refuse_in_one_line(node_env: dict[str, str], cluster: ClusterSet, args: list[str]) -> None:
    proc = invoke_cli(node_env, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(lines) == 1 and said_cluster_node(lines[0], cluster.masters()[0]), proc.stderr
    assert "ACL" not in proc.stderr and "permission" not in proc.stderr.lower()


def test_worker_exits_with_the_one_line(node_env: dict[str, str], cluster: ClusterSet) -> None:
    proc = subprocess.run(
        [*BULLWAIT, "worker"],
        env=dict(node_env, METRICS_PORT="0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    output = proc.stdout + proc.stderr
    assert said_cluster_node(output, cluster.masters()[0]), output
    assert "worker error" not in output


def test_health_names_the_cause(node_env: dict[str, str], cluster: ClusterSet, tmp_path: Path) -> None:
    serve = LoggedProcess([*BULLWAIT, "serve"], dict(node_env, METRICS_PORT="0"), tmp_path / "serve.log")
    try:
        port = int(listening(serve.wait_for_log("monitoring server listening"))["port"])
        status, doc = wait_until(lambda: health(port))
        assert status == 503
        assert any(said_cluster_node(p, cluster.masters()[0]) for p in doc["problems"]), doc
    finally:
        serve.kill()


@pytest.mark.parametrize(
    ("exc", "node"),
    [
        (MovedError("9263 127.0.0.1:7201"), "127.0.0.1:7201"),
        (ResponseError("MOVED 9263 10.0.0.2:7000"), "10.0.0.2:7000"),
        (ClusterCrossSlotError("Keys in request don't hash to the same slot"), "host:port,..."),
    ],
)
def test_the_line_without_settings_names_the_redirect_target(exc: Exception, node: str) -> None:
    assert f"set REDIS_CLUSTER_NODES={node} " in (cluster_reply_message(exc) or "")
    assert cluster_reply_message(ResponseError("ERR unknown command")) is None


def test_cluster_nodes_naming_a_plain_redis_is_one_line(env: dict[str, str], redis_server: RedisServer) -> None:
    cluster_env = {k: v for k, v in env.items() if k != "REDIS_URL"}
    cluster_env.update(REDIS_CLUSTER_NODES=f"127.0.0.1:{redis_server.port}", BULLMQ_PREFIX="{x}")
    for args in (["stats"], ["doctor"]):
        proc = invoke_cli(cluster_env, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(lines) == 1 and "is not in cluster mode" in lines[0], proc.stderr
        assert f"set REDIS_URL=redis://127.0.0.1:{redis_server.port}/<db>" in lines[0]
