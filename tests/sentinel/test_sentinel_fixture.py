"""The Sentinel test topology itself: three sentinels agree on one master, fail over on request
and when the master dies, and the old master comes back as a replica."""

from __future__ import annotations

import redis

from helpers.common import wait_for
from helpers.sentinel import SentinelSet


def test_failover_graceful_and_crash_move_the_master() -> None:
    with SentinelSet().start() as topo:
        first = topo.master_port()
        assert {topo.master_port(via=i) for i in range(3)} == {first}
        second = topo.failover()
        assert second != first
        assert redis.Redis(port=second).info("replication")["role"] == "master"
        third = topo.crash_master()
        assert third == first  # the only other node
        topo.restart(second)
        wait_for(
            lambda: redis.Redis(port=second, decode_responses=True).info("replication").get("master_port") == third,
            "the crashed master to rejoin as a replica",
            # Sentinel reads a replica's INFO every 10 s and converts a returning old master
            # only some seconds after it reports itself a master: ~20 s, more on a busy machine.
            timeout=90.0,
        )
