"""The Node side on a Redis Cluster (node-compat/lib/config.js reads REDIS_CLUSTER_NODES into an
ioredis.Cluster): the NestJS module adds and cancels timers, Bull Board shows the queues, and
`bullwait stats` reads what they wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet
from helpers.nodecompat import (  # noqa: F401 (fixtures)
    nest,
    node_required,
    seed_entry,
    seed_slot,
    start_board,
    start_node,
)

pytestmark = node_required


def test_nest_and_board_on_a_cluster(cluster: ClusterSet, cenv: dict[str, str], start_board: Any, prefix: str) -> None:
    tagged = cenv["BULLMQ_PREFIX"]
    for i in range(3):
        added = nest(
            cenv,
            "notifyWaitlistCustomer",
            {"waitlistEntry": seed_entry(f"w-{i}"), "slot": seed_slot(), "delayMs": 600_000},
        )
        key = f"{tagged}:waitlist-expiry:{added['jobId']}"
        assert cluster.client(cluster.master_for(key)).exists(key) == 1
    nest(cenv, "cancelExpiryTimer", {"waitlistId": "w-0"})

    stats = json.loads(invoke_cli(cenv, "stats", "--json").stdout)
    assert next(r for r in stats if r["name"] == "waitlist-expiry")["delayed"] == 2

    board = start_board(
        extra_env={
            "REDIS_URL": "",
            "REDIS_CLUSTER_NODES": cenv["REDIS_CLUSTER_NODES"],
            "BULLMQ_PREFIX": tagged,
            "REDIS_QUEUE_DB": "0",
        }
    )
    assert "redis cluster://127.0.0.1:" in board.proc.log()
    queues = {q["name"]: q for q in board.get("/api/queues").json()["queues"]}
    assert set(queues) == {"waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"}
    assert queues["waitlist-expiry"]["counts"]["delayed"] == 2


@pytest.mark.parametrize("prefix_value", ["bull", "{}"])
def test_node_refuses_an_untagged_prefix_in_one_line(cenv: dict[str, str], prefix_value: str) -> None:
    from helpers.nodecompat import run_node

    proc = run_node(dict(cenv, BULLMQ_PREFIX=prefix_value), "compat/inspect.js", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BULLMQ_PREFIX" in lines[0] and "hash tag" in lines[0], proc.stderr
