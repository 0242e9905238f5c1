"""The Sentinel test topology itself: three sentinels agree on one master, fail over on request
and when the master dies, and an old master comes back as a replica, the data kept."""

from __future__ import annotations

import redis

from helpers.common import wait_for
from helpers.sentinel import SentinelSet


def replica_of(port: int, master: int) -> bool:
    info = redis.Redis(port=port, decode_responses=True).info("replication")
    return info.get("role") == "slave" and info.get("master_port") == master and info.get("master_link_status") == "up"


def wait_replica(topo: SentinelSet, port: int, master: int, what: str) -> None:
    """Sentinel's own delays (SentinelSet.restart); 90 s also covers a TILT on a loaded machine."""
    try:
        wait_for(lambda: replica_of(port, master), what, timeout=90.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{topo.describe()}") from None


def test_failover_graceful_and_crash_move_the_master() -> None:
    with SentinelSet().start() as topo:
        first = topo.master_port()
        assert {topo.master_port(via=i) for i in range(3)} == {first}
        second = topo.failover()
        assert second != first
        master = redis.Redis(port=second, decode_responses=True)
        assert master.info("replication")["role"] == "master"
        wait_replica(topo, first, second, "the old master to follow the new one after the failover")
        master.set("before-the-crash", "kept")
        assert master.wait(1, 5000) == 1  # on the replica too, so the crash cannot lose it
        third = topo.crash_master()
        assert third == first  # the only other node
        topo.restart(second)  # a master again, without the key: these nodes do not persist writes
        wait_replica(topo, second, third, "the crashed master to rejoin as a replica")
        # The sentinels kept the master that has the data, not the node that came back without it.
        assert {topo.master_port(via=i) for i in range(3)} == {third}, topo.describe()
        assert redis.Redis(port=third, decode_responses=True).get("before-the-crash") == "kept"
