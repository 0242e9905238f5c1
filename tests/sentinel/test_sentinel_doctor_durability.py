"""`bullwait doctor` says whether BULLWAIT_WAIT_REPLICAS can keep its promise on the replicas
the sentinels report (pure checks of a read topology)."""

from __future__ import annotations

import pytest

from bullwait.engine.connection import ReplicaView, SentinelView, Topology
from bullwait.ops.doctor import durability_checks


def topology(replicas: int) -> Topology:
    return Topology(
        "mymaster",
        [SentinelView("127.0.0.1:26379", True)],
        master="127.0.0.1:6380",
        replicas=[ReplicaView(f"127.0.0.1:{6381 + i}", "ok", 0, 0) for i in range(replicas)],
    )


@pytest.mark.parametrize(
    ("wait", "replicas", "status", "words"),
    [
        (0, 2, None, ""),
        (1, 2, "warn", "set it to 2"),  # the two-replica failover test lost writes WAIT 1 confirmed
        (2, 2, "ok", "every replica"),
        (3, 2, "fail", "add replicas or lower it"),
        (1, 1, "warn", "no replica until the old one rejoins"),
    ],
)
def test_wait_replicas_against_the_replicas_there(wait: int, replicas: int, status: str | None, words: str) -> None:
    checks = durability_checks(topology(replicas), wait)
    if status is None:
        assert checks == []
        return
    [check] = checks
    assert check.status == status and words in check.detail, check
    assert f"BULLWAIT_WAIT_REPLICAS={wait}" in check.detail


def test_nothing_to_say_without_sentinel() -> None:
    assert durability_checks(None, 1) == []
