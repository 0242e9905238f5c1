"""A Redis Cluster of real processes on free loopback ports: 3 masters, 3 replicas.

    with ClusterSet().start() as cluster:
        cluster.nodes_setting         # "127.0.0.1:p1,..." for REDIS_CLUSTER_NODES
        cluster.master_for("{bull}")  # port of the master that owns the key's slot
        cluster.failover("{bull}")    # CLUSTER FAILOVER on that master's replica; its port

Each node gets its own cluster bus port (`--cluster-port`), both free: the default bus port
(port + 10000) may be taken or above 65535 for a free port. The node timeout is short (2 s)
so a failure is noticed in seconds; production clusters use 15 s.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import redis
from redis.crc import key_slot

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.settings import Settings

NODE_TIMEOUT_MS = 2000


class ClusterNode(RedisServer):
    """One `redis-server --cluster-enabled yes`, its nodes.conf in its own data directory."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.bus_port = free_port()
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--cluster-port",
            str(self.bus_port),
            # A replica syncs at once, not after redis' default 5 s wait for more replicas to join.
            "--repl-diskless-sync-delay",
            "0",
            *(extra_args or []),
        ]
        super().__init__(appendonly=False, extra_args=args)


class ClusterSet:
    """`masters` masters with `replicas` replicas each, created and stopped as one."""

    def __init__(self, masters: int = 3, replicas: int = 1, extra_args: list[str] | None = None) -> None:
        self.masters_count = masters
        self.replicas_per_master = replicas
        self.nodes: list[ClusterNode] = [ClusterNode(extra_args) for _ in range(masters * (1 + replicas))]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def nodes_setting(self) -> str:
        """The value for REDIS_CLUSTER_NODES (every node: any of them is a good seed)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout: float = 60.0) -> ClusterSet:
        try:
            for node in self.nodes:
                node.start()
            if shutil.which("redis-cli"):
                self._create_with_cli()
            else:
                self._create_by_hand()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    # --- what a test asks --------------------------------------------------------------

    def slot(self, key: str) -> int:
        return int(key_slot(key.encode()))

    def master_for(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        return self.slot_owner(self.slot(key))

    def slot_owner(self, slot: int) -> int:
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no node owns slot {slot}")

    def masters(self) -> list[int]:
        return sorted({int(master[1]) for _, _, master, *_ in self._slots()})

    def replicas_of(self, master_port: int) -> list[int]:
        for _, _, master, *replicas in self._slots():
            if int(master[1]) == master_port:
                return sorted(int(r[1]) for r in replicas)
        return []

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(
            host="127.0.0.1", port=self._running_ports()[0], decode_responses=True, socket_timeout=5
        )

    def failover(self, key: str, timeout: float = 30.0) -> int:
        """`CLUSTER FAILOVER` on a replica of the master that owns `key`'s slot; returns that
        replica's port once every node agrees it owns the slot."""
        slot = self.slot(key)
        old = self.slot_owner(slot)
        replicas = self.wait(lambda: self._synced_replicas(old), f"a synced replica of {old}", timeout)
        new = replicas[0]
        self.client(new).execute_command("CLUSTER", "FAILOVER")

        def switched() -> bool:
            return all(self._owner_as_seen_by(port, slot) == new for port in self._running_ports())

        self.wait(switched, f"every node to see {new} own slot {slot}", timeout)
        self.wait_ok(timeout)
        return new

    def crash(self, key: str, timeout: float = 30.0) -> tuple[int, int]:
        """SIGKILL the master that owns `key`'s slot; returns (its port, the promoted replica's)
        once the surviving nodes agree on the replica (after the node timeout)."""
        slot = self.slot(key)
        old = self.slot_owner(slot)
        self.wait(lambda: self._synced_replicas(old), f"a synced replica of {old}", timeout)
        self.node(old).kill()

        def promoted() -> int | None:
            owners = {self._owner_as_seen_by(port, slot) for port in self._running_ports()}
            owner = owners.pop() if len(owners) == 1 else None
            return owner if owner not in (None, old) else None

        return old, int(self.wait(promoted, f"a replica of {old} to take slot {slot} over", timeout))

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again on its port and data (it rejoins as a replica)."""
        self.node(port).start()
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says cluster_state:ok, knows every node and every replica is in sync."""
        self.wait(self._all_ok, "cluster_state:ok on every node", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> ClusterSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- creation ----------------------------------------------------------------------

    def _create_with_cli(self) -> None:
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        argv = ["redis-cli", "--cluster", "create", *addresses]
        argv += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    def _create_by_hand(self) -> None:
        """What redis-cli does: slots split evenly over the masters, MEET, then REPLICATE."""
        masters = self.nodes[: self.masters_count]
        per = 16384 // self.masters_count
        for i, node in enumerate(masters):
            end = 16383 if i == self.masters_count - 1 else (i + 1) * per - 1
            self.client(node.port).execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, end)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.client(node.port).execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, first.bus_port)
        self.wait(lambda: all(self._known(n.port) == len(self.nodes) for n in self.nodes), "nodes to meet")
        ids = [self.client(n.port).execute_command("CLUSTER", "MYID") for n in masters]
        for i, node in enumerate(self.nodes[self.masters_count :]):
            master_id = ids[i % self.masters_count]
            self.wait(lambda p=node.port, m=master_id: self._replicate(p, m), "a replica to attach")

    def _replicate(self, port: int, master_id: str) -> bool:
        try:
            self.client(port).execute_command("CLUSTER", "REPLICATE", master_id)
        except redis.ResponseError:
            return False  # the node has not heard of the master yet
        return True

    # --- state -------------------------------------------------------------------------

    def _running_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _slots(self) -> list[Any]:
        for port in self._running_ports():
            try:
                return list(self.client(port).execute_command("CLUSTER", "SLOTS"))
            except (redis.RedisError, OSError):
                continue
        raise RuntimeError("no cluster node answers")

    def _owner_as_seen_by(self, port: int, slot: int) -> int | None:
        for start, end, master, *_ in self.client(port).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        return None

    def _known(self, port: int) -> int:
        return int(self.client(port).cluster("INFO")["cluster_known_nodes"])

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

    def _all_ok(self) -> bool:
        running = self._running_ports()
        for port in running:
            info = self.client(port).cluster("INFO")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_assigned", 0)) != 16384:
                return False
            if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                return False
            # Every node's own view agrees on the roles (gossip after a failover takes a moment).
            if self._masters_seen_by(port) != self.masters_count:
                return False
        masters = self.masters()
        if len(masters) != self.masters_count:
            return False
        return all(len(self._synced_replicas(m)) >= self.replicas_per_master for m in masters)

    @staticmethod
    def wait(check: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout}s for {what}" + (f" (last error: {last})" if last else ""))


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


def cluster_settings(env: dict[str, str]) -> Settings:
    return Settings(
        redis_cluster_nodes=env["REDIS_CLUSTER_NODES"],
        redis_queue_db=0,
        bullmq_prefix=env["BULLMQ_PREFIX"],
        redis_host="127.0.0.1",
        redis_port=int(env["REDIS_PORT"]),
    )
