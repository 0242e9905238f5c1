"""A replicated Redis watched by three sentinels, all real processes on free loopback ports.

    with SentinelSet().start() as topo:
        topo.sentinels        # [(host, port), ...] to put in REDIS_SENTINELS
        topo.master_port()    # where the sentinels say the master is now
        topo.failover()       # graceful: SENTINEL FAILOVER, waits for the switch
        topo.crash_master()   # SIGKILL the master, waits for the sentinels to promote the replica

Sentinel times are short (down after 3 s, failover timeout 5 s) so a test sees a failover in
seconds; production defaults are 30 s and 3 min.

Why not shorter: at a switch each sentinel opens a new link to the new master and counts the
time since as a PING unanswered until a PONG comes back on it. A master that stalls longer
than the down-after time is failed over again, to whatever node the sentinels list as a
replica, even an old master that has just restarted empty (it reports itself a master until
Sentinel converts it). With 1 s, loaded runs showed `+sdown`, `+odown` and `+try-failover` of
the healthy new master right after `+failover-end`. `failover()` and `crash_master()` also
return only once every sentinel has had that PONG.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.settings import Settings

from helpers.common import wait_for
from helpers.reliability import COUNTING

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 3000
TILT_PERIOD_MS = 5000
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]


class SentinelProcess(RedisServer):
    """`redis-server <conf> --sentinel`: a sentinel rewrites its config file, so it gets one of its own."""

    def __init__(self, master_port: int, quorum: int = 2, extra_conf: str = "") -> None:
        super().__init__(appendonly=False)
        self.master_port = master_port
        self.quorum = quorum
        self.extra_conf = extra_conf

    def command(self) -> list[str]:
        conf = Path(self.data_dir) / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
            f"logfile {os.path.join(self.data_dir, 'sentinel.log')}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            f"{self.extra_conf}"
        )
        return [self.binary, str(conf), "--sentinel"]


class SentinelSet:
    """One master, `replicas` replicas and three sentinels; stopped and removed on exit."""

    def __init__(self, replicas: int = 1, data_args: list[str] | None = None, sentinel_conf: str = "") -> None:
        # A replica syncs at once, not after redis' default 5 s wait for more replicas to join.
        args = [*NO_SYNC_DELAY, *(data_args or [])]
        self.nodes = [RedisServer(appendonly=False, extra_args=args)]
        self.nodes += [RedisServer(appendonly=False, extra_args=args) for _ in range(replicas)]
        self._sentinel_conf = sentinel_conf
        self.sentinel_procs: list[SentinelProcess] = []
        self.frozen: set[int] = set()  # indexes of sentinels stopped with SIGSTOP (`freeze`)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinel_procs]

    @property
    def sentinels_setting(self) -> str:
        """The value for REDIS_SENTINELS."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def start(self) -> SentinelSet:
        master = self.nodes[0].start()
        for replica in self.nodes[1:]:
            replica.start()
            self._client(replica.port).replicaof("127.0.0.1", master.port)
        wait_for(lambda: all(self._synced(r.port) for r in self.nodes[1:]), "replicas in sync")
        self.sentinel_procs = [SentinelProcess(master.port, extra_conf=self._sentinel_conf) for _ in range(3)]
        for sentinel in self.sentinel_procs:
            sentinel.start()
            self._shorten_tilt(sentinel.port)
        wait_for(self._all_sentinels_see_everyone, "sentinels to discover each other and the replicas")
        return self

    def _shorten_tilt(self, port: int) -> None:
        """A sentinel whose own timer ran 2 s late (a loaded machine: seen mid-failover in a
        run of these tests) enters TILT and acts on nothing for 30 s, longer than a test waits
        for a failover; here for TILT_PERIOD_MS. SENTINEL DEBUG is Redis 7's; an older
        sentinel keeps 30 s."""
        with suppress(redis.ResponseError):
            self._client(port).execute_command("SENTINEL", "DEBUG", "tilt-period", TILT_PERIOD_MS)

    def master_port(self, via: int = 0) -> int:
        """The master's port as a sentinel reports it."""
        host_port = self._client(self.sentinel_procs[via].port).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(host_port[1])

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def failover(self, timeout: float = 30.0, via: int = 0) -> int:
        """A graceful `SENTINEL FAILOVER` sent to sentinel `via`; returns the new master's port
        once every sentinel not frozen reports it."""
        old = self.master_port(via)
        self._client(self.sentinel_procs[via].port).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return self._wait_new_master(old, timeout)

    @contextmanager
    def freeze(self, index: int) -> Iterator[None]:
        """Sentinel `index` stopped (SIGSTOP): its connections stay open, it answers nothing,
        as a sentinel cut off by the network; continued on exit."""
        proc = self.sentinel_procs[index].process
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        self.frozen.add(index)
        try:
            yield
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            self.frozen.discard(index)

    def crash_master(self, timeout: float = 30.0) -> int:
        """SIGKILL the master; returns the promoted replica's port."""
        old = self.master_port(next(i for i in range(len(self.sentinel_procs)) if i not in self.frozen))
        self.node(old).kill()
        return self._wait_new_master(old, timeout)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port. An old master comes back a master, without the
        writes it missed, and the sentinels make it a replica 8-20 s later (they wait for four
        hello periods, then for its next INFO, every 10 s)."""
        node = self.node(port)
        node.start()

    def stop(self) -> None:
        for proc in [*self.sentinel_procs, *self.nodes]:
            proc.cleanup()

    def __enter__(self) -> SentinelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_new_master(self, old: int, timeout: float) -> int:
        """The new master's port, once every sentinel not frozen names it and has had a PONG
        from it on the link it opened at the switch. Until then a sentinel counts the time since
        the switch as a PING unanswered: on a loaded machine it could judge the healthy new master
        down and fail over again, to whatever node it lists as a replica, even an old master
        that has just restarted empty (see DOWN_AFTER_MS)."""

        def settled() -> int | None:
            views = [
                self._client(s.port).sentinel_master(MASTER_NAME)
                for i, s in enumerate(self.sentinel_procs)
                if i not in self.frozen
            ]
            ports = {int(view["port"]) for view in views}
            if len(ports) != 1 or old in ports:
                return None
            if any(view["flags"] != "master" or int(view["last-ping-sent"]) != 0 for view in views):
                return None
            port = ports.pop()
            return port if self._client(port).info("replication").get("role") == "master" else None

        try:
            return int(wait_for(settled, f"the sentinels to switch away from {old} and reach the new master", timeout))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.describe()}") from None

    def describe(self) -> str:
        """Each node's role and each sentinel's master and its last events, for a failure message."""
        lines = []
        for node in self.nodes:
            try:
                info = self._client(node.port).info("replication")
                lines.append(f":{node.port} {info.get('role')} of :{info.get('master_port', '-')}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f":{node.port} not answering ({exc})")
        for sentinel in self.sentinel_procs:
            try:
                master = self._client(sentinel.port).sentinel_master(MASTER_NAME)
                named = f"names :{master['port']} ({master['flags']}, last-ping-sent {master['last-ping-sent']})"
            except (redis.RedisError, OSError) as exc:
                named = f"not answering ({exc})"
            log = Path(sentinel.data_dir) / "sentinel.log"
            events = [
                line.strip()
                for line in log.read_text(errors="replace").splitlines()
                if " # " in line or "convert-to-slave" in line
            ]
            lines.append(f"sentinel :{sentinel.port} {named}; last events:\n    " + "\n    ".join(events[-20:]))
        return "\n".join(lines)

    def _all_sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinel_procs:
            master: dict[str, Any] = self._client(sentinel.port).sentinel_master(MASTER_NAME)
            if int(master.get("num-other-sentinels", 0)) < len(self.sentinel_procs) - 1:
                return False
            if int(master.get("num-slaves", 0)) < len(self.nodes) - 1:
                return False
        return True

    def _synced(self, port: int) -> bool:
        info = self._client(port).info("replication")
        return info.get("master_link_status") == "up"

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


# The worker name the sentinel tests give `bullwait worker`, to find it by name on a new master.
WORKER_NAME = "py-sentinel-1"
# For `sentinel_env(env, topo, **WORKER_ENV)`: that name, and the processors counting runs.
WORKER_ENV = {"BULLWAIT_WORKER_NAME": WORKER_NAME, **COUNTING}


def sentinel_env(env: dict[str, str], topo: SentinelSet, **extra: str) -> dict[str, str]:
    """The test env with Redis named by the sentinels only (db 0), plus `extra`, for bullwait and
    the Node scripts alike. REDIS_HOST/PORT point at a closed port: a process that ignored
    REDIS_SENTINELS would find nothing there (never port 6379)."""
    out = {k: v for k, v in env.items() if k != "REDIS_URL"}
    out.update(
        REDIS_SENTINELS=topo.sentinels_setting,
        REDIS_QUEUE_DB="0",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(free_port()),
        **extra,
    )
    return out


def sentinel_settings(env: dict[str, str]) -> Settings:
    return Settings(
        redis_sentinels=env["REDIS_SENTINELS"],
        redis_queue_db=0,
        bullmq_prefix=env["BULLMQ_PREFIX"],
        redis_host="127.0.0.1",
        redis_port=int(env["REDIS_PORT"]),
    )
