"""docker-compose.yml's `cluster` profile run here without Docker: its six nodes' own redis-server
command lines (the local redis-server, each on a free port, announcing `localhost` where compose
announces the service name), its one-shot's own script (a redis-cli stand-in maps the service
names to those ports), then a `bullwait worker`, `bullwait stats`/`doctor` and the NestJS
producer with the worker's and the board's container environments. So the flags work with this
Redis, clients follow host-name endpoints (CLUSTER SLOTS and MOVED name `localhost`, not an
address), and the one-shot creates the cluster once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bullwait.dev.cluster import wait_for
from bullwait.dev.embedded import RedisServer, free_port

from helpers.cli import invoke_cli
from helpers.common import WorkerProcess
from helpers.compose import container_env, exec_argv, load_compose, resolve
from helpers.nodecompat import nest, node_required

NODES = [f"redis-node-{n}" for n in range(1, 7)]
ANNOUNCED = "localhost"  # what each node announces here; compose's is its service name

# redis-cli with the compose service names mapped to this test's nodes: `name:6379` and
# `-h name -p 6379` become `localhost:<its port>`.
CLI_STAND_IN = """#!{python}
import os, re, sys
ports = {ports!r}
args, host = [], None
for arg in sys.argv[1:]:
    match = re.fullmatch(r"(redis-node-\\d+):6379", arg)
    if match:
        arg = f"localhost:{{ports[match.group(1)]}}"
    elif arg in ports:
        host, arg = arg, "localhost"
    elif arg == "6379" and host:
        arg = str(ports[host])
    args.append(arg)
os.execvp({cli!r}, [{cli!r}, *args])
"""


class ComposeCluster:
    """The profile's nodes as local processes, by service name."""

    def __init__(self, tmp_path: Path) -> None:
        self.compose = load_compose()
        self.tmp_path = tmp_path
        self.servers: dict[str, RedisServer] = {}
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        (stubs / "hostname").write_text(f"#!/bin/sh\necho {ANNOUNCED}\n")
        (stubs / "hostname").chmod(0o755)
        self.stubs = stubs

    def start(self) -> ComposeCluster:
        for name in NODES:
            port = free_port()
            argv = exec_argv(self.compose, name, {}, path=str(self.stubs))
            argv[argv.index("--port") + 1] = str(port)
            config = argv.index("--cluster-config-file") + 1
            argv[config] = argv[config].removeprefix("/data/")  # in the node's own --dir here
            # All six share one host here: each needs its own bus port (compose's is 16379 each).
            server = RedisServer(port=port, extra_args=[*argv, "--cluster-port", str(free_port())])
            self.servers[name] = server.start()
        cli = self.stubs / "redis-cli"
        ports = {name: server.port for name, server in self.servers.items()}
        cli.write_text(CLI_STAND_IN.format(python=sys.executable, ports=ports, cli=_real("redis-cli")))
        cli.chmod(0o755)
        return self

    def create(self) -> subprocess.CompletedProcess[str]:
        """Run the one-shot service's script as its container would."""
        service = self.compose["services"]["redis-cluster-create"]
        script = resolve(service["command"], {})[2]
        env = {"PATH": f"{self.stubs}:{os.environ['PATH']}", **container_env(service, {})}
        return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)

    def env_of(self, service: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A service's container environment, its node names mapped to this test's ports."""
        env = container_env(self.compose["services"][service], extra or {})
        for name, server in self.servers.items():
            env["REDIS_CLUSTER_NODES"] = env["REDIS_CLUSTER_NODES"].replace(
                f"{name}:6379", f"{ANNOUNCED}:{server.port}"
            )
        return {**os.environ, **env, **(extra or {}), "PYTHONUNBUFFERED": "1"}

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.servers[name].port, decode_responses=True, socket_timeout=5)

    def all_ok(self) -> bool:
        """Every node says ok and knows all six; every master's replica is listed."""
        for name in NODES:
            info = self.client(name).cluster("INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(NODES):
                return False
            if any(len(shard) != 4 for shard in self.client(name).execute_command("CLUSTER", "SLOTS")):
                return False
        return True

    def stop(self) -> None:
        for server in self.servers.values():
            server.cleanup()


def _real(program: str) -> str:
    import shutil

    found = shutil.which(program)
    if not found:
        pytest.skip(f"{program} is not installed")
    return found


@pytest.fixture
def compose_cluster(tmp_path: Path) -> Iterator[ComposeCluster]:
    cluster = ComposeCluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_the_cluster_profile_runs_with_this_redis(compose_cluster: ComposeCluster, api: Any, tmp_path: Path) -> None:
    created = compose_cluster.create()
    assert created.returncode == 0, created.stdout + created.stderr
    assert "[OK] All 16384 slots covered" in created.stdout, created.stdout
    wait_for(compose_cluster.all_ok, "cluster_state:ok on the six nodes", 60)
    again = compose_cluster.create()
    assert again.returncode == 0 and "already created" in again.stdout, again.stdout + again.stderr

    # Clients are handed the announced name, not an address.
    slots = compose_cluster.client("redis-node-1").execute_command("CLUSTER", "SLOTS")
    assert len(slots) == 3, slots  # 3 masters, a replica each (all_ok)
    endpoints = {node[0] for shard in slots for node in shard[2:]}
    assert endpoints == {ANNOUNCED}, slots

    worker_env = compose_cluster.env_of("worker-cluster", {"METRICS_HOST": "127.0.0.1", "METRICS_PORT": "0"})
    worker_env.update(api.env(token="compose-token"))
    worker = WorkerProcess(worker_env, [], tmp_path / "worker.log")
    try:
        worker.wait_for_log("worker started", count=3, timeout=60)
        board_env = compose_cluster.env_of("bull-board-cluster")
        added = [nest(board_env, "notifyWaitlistCustomer", _timer(f"w-{i}")) for i in range(6)]
        assert len({a["jobId"] for a in added}) == 6

        def all_run() -> bool:
            return worker.log().count("job completed") >= 6

        wait_for(all_run, "the worker to run the six timers", 60)
        stats = {row["name"]: row for row in json.loads(invoke_cli(worker_env, "stats", "--json").stdout)}
        assert stats["waitlist-expiry"]["completed"] == 6 and stats["waitlist-expiry"]["delayed"] == 0, stats
        assert stats["waitlist-expiry"]["workers"] >= 1
        doctor = invoke_cli(worker_env, "doctor")
        print(f"\n{created.stdout.splitlines()[-1]}\n{doctor.stdout}")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "3 masters" in doctor.stdout and "3 replicas" in doctor.stdout, doctor.stdout
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]
    assert "Traceback" not in worker.log()


def _timer(waitlist_id: str) -> dict[str, Any]:
    from helpers.nodecompat import seed_entry, seed_slot

    return {"waitlistEntry": seed_entry(waitlist_id), "slot": seed_slot(), "delayMs": 100}


pytestmark = node_required
