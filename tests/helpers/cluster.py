"""A Redis Cluster of real processes on free loopback ports: 3 masters, 3 replicas, and what
the tests do to it.

    with ClusterSet().start() as cluster:
        cluster.nodes_setting         # "127.0.0.1:p1,..." for REDIS_CLUSTER_NODES
        cluster.master_for("{bull}")  # port of the master that owns the key's slot
        cluster.failover("{bull}")    # CLUSTER FAILOVER on that master's replica; its port
        cluster.spread(tags)          # each hash tag on a master of its own, where there are enough
        cluster.keys_per_shard({"what": "glob*"})  # {master port: {"what": keys matching}}
        cluster.move_slot(slot, port) # the slot and its keys to another master, as a reshard does

The node timeout is short (2 s) so a failure is noticed in seconds; production clusters use 15 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.crc import key_slot

from bullwait.dev.cluster import LocalCluster
from bullwait.dev.embedded import RedisServer, free_port
from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.settings import Settings

from helpers.common import WorkerProcess, wait_for
from helpers.jobdata import API_TOKEN

NODE_TIMEOUT_MS = 2000


class ClusterSet(LocalCluster):
    """`masters` masters with `replicas` replicas each; started ok once every replica is in sync."""

    def __init__(self, masters: int = 3, replicas: int = 1, extra_args: list[str] | None = None) -> None:
        super().__init__(masters, replicas, NODE_TIMEOUT_MS, extra_args)

    # --- what a test asks --------------------------------------------------------------

    def slot(self, key: str) -> int:
        return int(key_slot(key.encode()))

    def masters(self) -> list[int]:
        return sorted({int(master[1]) for _, _, master, *_ in self._slots()})

    def replicas_of(self, master_port: int) -> list[int]:
        for _, _, master, *replicas in self._slots():
            if int(master[1]) == master_port:
                return sorted(int(r[1]) for r in replicas)
        return []

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(
            host="127.0.0.1", port=self._running_ports()[0], decode_responses=True, socket_timeout=5
        )

    def spread(self, tags: list[str]) -> str | None:
        """Where two of `tags` share a master, move the slot of the later one (with any keys an
        earlier test of the session left there) to a master that owns none of them, as an
        operator would (docs/cluster.md), one tag at a time; says what moved. The cluster stays
        whole, and once spread it stays so."""
        moved = []
        while True:
            owners = [self.master_for(tag) for tag in tags]
            free = [port for port in self.masters() if port not in owners]
            shared = next((tag for n, tag in enumerate(tags) if owners[n] in owners[:n]), None)
            if shared is None or not free:
                return "; ".join(moved) or None
            slot, source, target = self.slot(shared), self.master_for(shared), free[0]
            self.move_slot(slot, target)
            assert self.master_for(shared) == target
            moved.append(f"slot {slot} of {shared} moved from master :{source} to :{target}, which had no tag")

    def keys_per_shard(self, patterns: dict[str, str]) -> dict[int, dict[str, int]]:
        """{master port: {name: keys matching its SCAN glob}} (braces are plain in a glob)."""
        table: dict[int, dict[str, int]] = {}
        for port in self.masters():
            client = self.client(port)
            try:
                table[port] = {
                    what: sum(1 for _ in client.scan_iter(match=glob, count=1000)) for what, glob in patterns.items()
                }
            finally:
                client.close()
        return table

    def failover(self, key: str, timeout: float = 30.0) -> int:
        """`CLUSTER FAILOVER` on a replica of the master that owns `key`'s slot; returns that
        replica's port once every node agrees it owns the slot."""
        slot = self.slot(key)
        old = self.slot_owner(slot)
        replicas = wait_for(lambda: self._synced_replicas(old), f"a synced replica of {old}", timeout)
        new = replicas[0]
        self.client(new).execute_command("CLUSTER", "FAILOVER")

        def switched() -> bool:
            return all(self._owner_as_seen_by(port, slot) == new for port in self._running_ports())

        wait_for(switched, f"every node to see {new} own slot {slot}", timeout)
        self.wait_ok(timeout)
        return new

    def crash(self, key: str, timeout: float = 30.0) -> tuple[int, int]:
        """SIGKILL the master that owns `key`'s slot; returns (its port, the promoted replica's)
        once the surviving nodes agree on the replica (after the node timeout)."""
        slot = self.slot(key)
        old = self.slot_owner(slot)
        wait_for(lambda: self._synced_replicas(old), f"a synced replica of {old}", timeout)
        self.node(old).kill()

        def promoted() -> int | None:
            owners = {self._owner_as_seen_by(port, slot) for port in self._running_ports()}
            owner = owners.pop() if len(owners) == 1 else None
            return owner if owner not in (None, old) else None

        return old, int(wait_for(promoted, f"a replica of {old} to take slot {slot} over", timeout))

    def move_slot(self, slot: int, to_port: int, batch: int = 4, pause: float = 0.05) -> float:
        """Move `slot` to the master on `to_port` a few keys at a time (so load meets the half-moved
        slot), as `redis-cli --cluster reshard` does; returns the seconds from IMPORTING until every
        node names the new owner.

        Always through IMPORTING, even for an empty slot: the importing master takes a new config
        epoch when it is given the slot. A bare SETSLOT NODE does not, and a master whose epoch is
        older than the previous owner's (a failover earlier in the session bumps epochs) lost the
        slot again to the replicas' stale view: two masters each MOVEd the slot to the other."""
        started = time.monotonic()
        from_port = self.slot_owner(slot)
        source, target = self.client(from_port), self.client(to_port)
        source_id = source.execute_command("CLUSTER", "MYID")
        target_id = target.execute_command("CLUSTER", "MYID")
        # Target first: a client ASKed there before it imports would be MOVED back.
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        time.sleep(pause * 4)  # commands on keys not yet created there are ASKed to the target
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
            _migrate(source, to_port, keys)
            time.sleep(pause)
        # Target first (it takes the new epoch), then source (it stops ASKing and MOVEs), then the others.
        for port in [to_port, from_port, *(p for p in self.masters() if p not in (to_port, from_port))]:
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(lambda: self.all_see(slot, to_port), f"every node to see :{to_port} own slot {slot}")
        took = time.monotonic() - started
        self.wait_ok()
        return took

    def all_see(self, slot: int, owner: int) -> bool:
        return all(self._owner_as_seen_by(port, slot) == owner for port in self._running_ports())

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again on its port and data (it rejoins as a replica)."""
        self.node(port).start()
        self.wait_ok(timeout)

    # --- state -------------------------------------------------------------------------

    def _owner_as_seen_by(self, port: int, slot: int) -> int | None:
        for start, end, master, *_ in self.client(port).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        return None

    def _masters_seen_by(self, port: int) -> int:
        nodes = self.client(port).execute_command("CLUSTER", "NODES")
        lines = nodes.splitlines() if isinstance(nodes, str) else []
        return sum("master" in line.split()[2].split(",") and "fail" not in line.split()[2] for line in lines)

    def _synced_replicas(self, master_port: int) -> list[int]:
        synced = []
        for port in self.replicas_of(master_port):
            info = self.client(port).info("replication")
            if info.get("master_link_status") == "up":
                synced.append(port)
        return synced

    def _slot_map_seen_by(self, port: int) -> list[tuple[int, int, int]]:
        ranges = self.client(port).execute_command("CLUSTER", "SLOTS")
        return sorted((int(start), int(end), int(master[1])) for start, end, master, *_ in ranges)

    def _all_ok(self) -> bool:
        """Also: every node's own view agrees on the roles and on the owner of every slot
        (gossip after a failover or a moved slot takes a moment; cluster_state:ok alone allows
        two nodes that each send a slot's clients to the other), and every replica is in sync."""
        if not super()._all_ok():
            return False
        ports = self._running_ports()
        if any(self._masters_seen_by(port) != self.masters_count for port in ports):
            return False
        if len({tuple(self._slot_map_seen_by(port)) for port in ports}) != 1:
            return False
        masters = self.masters()
        if len(masters) != self.masters_count:
            return False
        return all(len(self._synced_replicas(m)) >= self.replicas_per_master for m in masters)


def _migrate(source: redis.Redis, to_port: int, keys: list[str], tries: int = 5) -> None:
    """MIGRATE ... KEYS, again after an IOERR (a cached link to the target dropped on a loaded
    machine). REPLACE: a key the source still has is the live copy, whatever reached the target."""
    for attempt in range(tries):
        try:
            source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *keys)
            return
        except redis.ResponseError as exc:
            if not str(exc).startswith("IOERR") or attempt == tries - 1:
                raise
            print(f"MIGRATE to :{to_port} again after: {exc}")
            time.sleep(0.1)


def cluster_env(env: dict[str, str], cluster: ClusterSet) -> dict[str, str]:
    """The test env with Redis named by the cluster's nodes only. REDIS_HOST/PORT point at a
    closed port: a bullwait that ignored REDIS_CLUSTER_NODES would find nothing there."""
    out = {k: v for k, v in env.items() if k not in ("REDIS_URL", "REDIS_QUEUE_DB")}
    out.update(
        REDIS_CLUSTER_NODES=cluster.nodes_setting,
        REDIS_QUEUE_DB="0",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(free_port()),
        # The hash tag keeps every key of a queue on one slot, as BullMQ's Lua needs.
        BULLMQ_PREFIX="{" + env.get("BULLMQ_PREFIX", "bull") + "}",
    )
    return out


def tagged_env(cenv: dict[str, str]) -> dict[str, str]:
    """The cluster env with tagged queue names (`{waitlist-expiry}`, ...) under the same prefix
    without its braces, so each queue's keys hash by its own name."""
    return dict(cenv, BULLMQ_PREFIX=cenv["BULLMQ_PREFIX"].strip("{}"), BULLWAIT_QUEUE_NAMES="tagged")


def cluster_settings(env: dict[str, str]) -> Settings:
    return Settings(
        redis_cluster_nodes=env["REDIS_CLUSTER_NODES"],
        redis_queue_db=0,
        bullmq_prefix=env["BULLMQ_PREFIX"],
        redis_host="127.0.0.1",
        redis_port=int(env["REDIS_PORT"]),
    )


@contextlib.contextmanager
def waitlist_worker(env: dict[str, str], api: FakeWhatsApp, tmp_path: Path, name: str) -> Iterator[WorkerProcess]:
    """A `bullwait worker` of the three queues on the cluster in `env`, sending to `api`; on the
    way out it must stop cleanly, with no traceback and no API token in its log."""
    env = {**env, **api.env(token=API_TOKEN), "WAITLIST_OFFER_MINUTES": "1", "BULLWAIT_WORKER_NAME": name}
    proc = WorkerProcess(env, [], tmp_path / "worker.log")
    try:
        proc.wait_for_log("worker started", count=3, timeout=60)
        yield proc
    finally:
        code = proc.terminate()
        log = proc.log()
        assert "Traceback" not in log, log[-3000:]
        assert code == 0, log[-3000:]
        assert API_TOKEN not in log
