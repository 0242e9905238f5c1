"""The cluster test topology itself: 3 masters with one replica each cover every slot, keys
land where CLUSTER KEYSLOT says, and a CLUSTER FAILOVER moves a slot to the replica."""

from __future__ import annotations

from helpers.cluster import ClusterSet


def test_three_masters_with_a_replica_each_cover_every_slot(cluster: ClusterSet) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert all(len(cluster.replicas_of(m)) == 1 for m in masters)
    for port in cluster.ports:
        info = cluster.client(port).cluster("INFO")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == 16384


def test_keys_spread_over_the_masters_and_failover_moves_a_slot(cluster: ClusterSet) -> None:
    client = cluster.cluster_client()
    try:
        owners = {cluster.master_for(f"{{salon-{i}}}") for i in range(30)}
        assert owners == set(cluster.masters())
        client.set("{fixture}:k", "v")
        old = cluster.master_for("{fixture}:k")
        assert cluster.client(old).get("{fixture}:k") == "v"
        new = cluster.failover("{fixture}:k")
        assert new != old and cluster.master_for("{fixture}:k") == new
        assert cluster.client(new).get("{fixture}:k") == "v"
        assert old in cluster.replicas_of(new)
        assert len(cluster.masters()) == 3
    finally:
        client.close()
