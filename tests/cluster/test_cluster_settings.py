"""Cluster settings: REDIS_CLUSTER_NODES selects a Redis Cluster; the db and the prefix a cluster
needs, and every refusal in one line, the same on the Python and the Node side."""

from __future__ import annotations

import json
import subprocess

import pytest

from bullwait.errors import SettingsError
from bullwait.settings import QueueNaming, has_hash_tag
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.nodecompat import NODE, NODE_DIR, node_required
from helpers.settings import load, refusal


def test_cluster_nodes_default_to_db_0_and_a_tagged_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, REDIS_CLUSTER_NODES=" 10.0.0.1:7000, redis-b:7001,[::1]:7002 ")
    assert settings.cluster is not None
    assert settings.cluster.nodes == (("10.0.0.1", 7000), ("redis-b", 7001), ("::1", 7002))
    assert settings.redis_queue_db == 0 and settings.bullmq_prefix == "{bull}"
    assert settings.sentinel is None and settings.redis_configured
    # Overrides (--redis-url and the like go through this) keep the cluster's defaults.
    assert settings.with_overrides(metrics_port=0).bullmq_prefix == "{bull}"


def test_explicit_db_0_and_tagged_prefix_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, REDIS_CLUSTER_NODES="a:7000", REDIS_QUEUE_DB="0", BULLMQ_PREFIX="app{queues}")
    assert settings.redis_queue_db == 0 and settings.bullmq_prefix == "app{queues}"


def test_one_node_keeps_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, REDIS_URL="redis://localhost:7000/2")
    assert settings.cluster is None and settings.bullmq_prefix == "bull"


@pytest.mark.parametrize(
    ("prefix", "tagged"),
    [
        ("{bull}", True),
        ("a{b}c", True),
        ("{}", False),
        ("{bull", False),
        ("bull}", False),
        ("}{x}", True),
        ("x", False),
    ],
)
def test_hash_tag_as_redis_reads_it(prefix: str, tagged: bool) -> None:
    assert has_hash_tag(prefix) is tagged


@pytest.mark.parametrize(
    ("env", "name", "expected"),
    [
        ({"REDIS_QUEUE_DB": "1"}, "REDIS_QUEUE_DB", "database 0 only"),
        ({"BULLMQ_PREFIX": "bull"}, "BULLMQ_PREFIX", "hash tag"),
        ({"BULLMQ_PREFIX": "{}"}, "BULLMQ_PREFIX", "hash tag"),
        ({"REDIS_CLUSTER_NODES": "a:7000,"}, "REDIS_CLUSTER_NODES", "entry 2 is empty"),
        ({"REDIS_CLUSTER_NODES": "a"}, "REDIS_CLUSTER_NODES", "not host:port"),
        ({"REDIS_CLUSTER_NODES": "a:0"}, "REDIS_CLUSTER_NODES", "from 1 to 65535"),
        ({"REDIS_CLUSTER_NODES": "redis://a:7000"}, "REDIS_CLUSTER_NODES", "is a URL"),
    ],
)
def test_refusals_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, expected: str
) -> None:
    message = refusal(monkeypatch, **{"REDIS_CLUSTER_NODES": "a:7000", **env})
    assert message.startswith(f"invalid setting {name}:") and expected in message, message


def test_credentials_in_the_node_list_are_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, REDIS_CLUSTER_NODES="user:s3cret-pw@a:7000")
    assert "REDIS_PASSWORD" in message and "s3cret-pw" not in message


@pytest.mark.parametrize("other", ["REDIS_URL", "REDIS_SENTINELS"])
def test_two_topologies_name_both(monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    value = "redis://:pw-in-url@localhost:6379/0" if other == "REDIS_URL" else "a:26379"
    message = refusal(monkeypatch, REDIS_CLUSTER_NODES="a:7000", **{other: value})
    assert f"{other} and REDIS_CLUSTER_NODES" in message and "pw-in-url" not in message


def test_cli_refuses_in_one_line_with_exit_2(env: dict[str, str]) -> None:
    bad = {k: v for k, v in env.items() if k != "REDIS_URL"}
    proc = invoke_cli(dict(bad, REDIS_CLUSTER_NODES="a:7000", BULLMQ_PREFIX="nohashtag"), "stats")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BULLMQ_PREFIX" in lines[0] and "hash tag" in lines[0], proc.stderr


# --- The Node side (node-compat/lib/config.js) reads the same values the same way ----------

NODE_CONFIG = """
const c = require('./lib/config');
try {
  const cfg = c.loadConfig(JSON.parse(process.argv[1]));
  const out = {
    prefix: cfg.prefix, names: cfg.queues.map((q) => q.active), where: c.describeRedis(cfg.redis),
    opts: cfg.redis.redisOptions || null,
  };
  if (cfg.connection.disconnect) cfg.connection.disconnect();
  console.log(JSON.stringify(out));
} catch (err) { console.log(JSON.stringify({error: err.message})); }
"""


def test_tagged_queue_names_allow_an_untagged_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each queue name is its own hash tag, so the prefix need not be one; unset, it is `bull`.
    tagged = load(monkeypatch, REDIS_CLUSTER_NODES="a:7000", BULLWAIT_QUEUE_NAMES="Tagged")
    assert tagged.bullwait_queue_names is QueueNaming.TAGGED and tagged.bullmq_prefix == "bull"
    assert load(monkeypatch, BULLMQ_PREFIX="app").bullmq_prefix == "app"
    assert load(monkeypatch, BULLMQ_PREFIX="{app}").bullmq_prefix == "{app}"


def test_refusal_names_both_ways_to_a_hash_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, REDIS_CLUSTER_NODES="a:7000", BULLMQ_PREFIX="bull", BULLWAIT_QUEUE_NAMES="current")
    assert "BULLMQ_PREFIX" in message and "{bull}" in message and "BULLWAIT_QUEUE_NAMES=tagged" in message


def node_config(env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [NODE or "node", "-e", NODE_CONFIG, json.dumps(env)], cwd=NODE_DIR, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_QUEUE_DB": "1"},
        {"BULLMQ_PREFIX": "bull"},
        {"REDIS_CLUSTER_NODES": "a:7000,"},
        {"REDIS_CLUSTER_NODES": "a"},
        {"REDIS_CLUSTER_NODES": "redis://a:7000"},
        {"REDIS_URL": "redis://localhost:6379/0"},
        {"REDIS_SENTINELS": "a:26379"},
        {"REDIS_QUEUE_DB": "0", "BULLMQ_PREFIX": "x{y}"},
        {"BULLWAIT_QUEUE_NAMES": "tagged"},
        {"BULLWAIT_QUEUE_NAMES": "tagged", "BULLMQ_PREFIX": "app"},
        {"BULLWAIT_QUEUE_NAMES": "tagged", "BULLMQ_PREFIX": "{app}"},
        {"BULLWAIT_QUEUE_NAMES": "TAGGED"},
        {"BULLWAIT_QUEUE_NAMES": ""},
        {"BULLWAIT_QUEUE_NAMES": " tagged"},
        {"BULLWAIT_QUEUE_NAMES": "legacy", "BULLMQ_PREFIX": "{app}"},
        {"BULLWAIT_QUEUE_NAMES": "legacy", "BULLMQ_PREFIX": "app"},
        {},
    ],
)
@node_required[0]
@node_required[1]
def test_node_accepts_and_refuses_what_python_does(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    full = {"REDIS_CLUSTER_NODES": "a:7000,b:7001", "REDIS_PASSWORD": "pw", **env}
    node = node_config(full)
    try:
        settings = load(monkeypatch, **full)
    except SettingsError as exc:
        python_variable = str(exc).removeprefix("invalid setting ").split(":")[0].split(" and ")[0]
        assert "error" in node, node
        assert str(node["error"]).startswith(python_variable), (node, str(exc))
        return
    assert "error" not in node, node
    assert node["prefix"] == settings.bullmq_prefix
    # The same keys: the queue names under the naming, braces included, in the catalog's order.
    assert node["names"] == [queue_name(key, settings) for key in QueueKey]
    assert node["opts"] == {"password": "pw", "maxRetriesPerRequest": None}
    assert str(node["where"]).startswith("cluster://a:7000,b:7001")
