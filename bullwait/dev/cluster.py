"""A local Redis Cluster of real redis-servers on free loopback ports, for the tests and the bench.

    with LocalCluster(masters=3, replicas=1).start() as cluster:
        cluster.nodes_setting          # "127.0.0.1:p1,..." for REDIS_CLUSTER_NODES
        cluster.master_for("{bull}")   # port of the master that owns the key's slot

Each node gets its own cluster bus port (`--cluster-port`), both free: the default bus port
(port + 10000) may be taken or above 65535 for a free port.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Self

import redis
from redis.crc import key_slot

from bullwait.dev.embedded import RedisServer, free_port

SLOTS = 16384


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """`check()`'s first truthy value; Redis and OS errors count as not yet (a node starting,
    a failover under way). TimeoutError names `what` and the last error."""
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


class ClusterNode(RedisServer):
    """One `redis-server --cluster-enabled yes`, its nodes.conf in its own data directory."""

    def __init__(self, node_timeout_ms: int | None = None, extra_args: list[str] | None = None) -> None:
        self.bus_port = free_port()
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(self.bus_port)]
        if node_timeout_ms is not None:
            args += ["--cluster-node-timeout", str(node_timeout_ms)]
        # A replica syncs at once, not after redis' default 5 s wait for more replicas to join.
        args += ["--repl-diskless-sync-delay", "0", *(extra_args or [])]
        super().__init__(appendonly=False, extra_args=args)


class LocalCluster:
    """`masters` masters with `replicas` replicas each, created and stopped as one."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.masters_count = masters
        self.replicas_per_master = replicas
        self.nodes = [ClusterNode(node_timeout_ms, extra_args) for _ in range(masters * (1 + replicas))]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def nodes_setting(self) -> str:
        """The value for REDIS_CLUSTER_NODES (every node: any of them is a good seed)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout: float = 60.0) -> Self:
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

    def wait_ok(self, timeout: float = 60.0) -> None:
        wait_for(self._all_ok, "cluster_state:ok on every node", timeout)

    def master_for(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        return self.slot_owner(int(key_slot(key.encode())))

    def slot_owner(self, slot: int) -> int:
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no node owns slot {slot}")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def command(self, port: int, *args: Any) -> Any:
        """A raw command to one node (CLUSTER subcommands have no typed method in redis-py)."""
        return self.client(port).execute_command(*args)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _create_with_cli(self) -> None:
        argv = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)]
        argv += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    def _create_by_hand(self) -> None:
        """What redis-cli does: slots split evenly over the masters, MEET, then REPLICATE."""
        masters = self.nodes[: self.masters_count]
        per = SLOTS // self.masters_count
        for i, node in enumerate(masters):
            end = SLOTS - 1 if i == self.masters_count - 1 else (i + 1) * per - 1
            self.command(node.port, "CLUSTER", "ADDSLOTSRANGE", i * per, end)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.command(node.port, "CLUSTER", "MEET", "127.0.0.1", first.port, first.bus_port)
        wait_for(lambda: all(self._known(n.port) == len(self.nodes) for n in self.nodes), "nodes to meet")
        ids = [self.command(n.port, "CLUSTER", "MYID") for n in masters]
        for i, node in enumerate(self.nodes[self.masters_count :]):
            # ResponseError until the node has heard of the master: wait_for retries it.
            replicate = partial(self.command, node.port, "CLUSTER", "REPLICATE", ids[i % self.masters_count])
            wait_for(replicate, "a replica to attach")

    def _running_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _slots(self) -> list[Any]:
        for port in self._running_ports():
            try:
                return list(self.command(port, "CLUSTER", "SLOTS"))
            except (redis.RedisError, OSError):
                continue
        raise RuntimeError("no cluster node answers")

    def _known(self, port: int) -> int:
        return int(self.client(port).cluster("INFO")["cluster_known_nodes"])

    def _all_ok(self) -> bool:
        """Every running node says cluster_state:ok, all slots assigned, every node known."""
        for port in self._running_ports():
            info = self.client(port).cluster("INFO")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_assigned", 0)) != SLOTS:
                return False
            if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                return False
        return True
