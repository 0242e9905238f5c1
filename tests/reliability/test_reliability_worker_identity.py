"""A worker keeps its names through a Redis restart (item 6).

Node's getWorkers(), Bull Board and `bullwait stats` find workers by their CLIENT LIST
names; connections that came back from a restart without them made a busy worker look
gone ("No workers", 503 on /health/queues). Each test runs its own redis-server, so the
restart disturbs no other test.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.nodecompat import node_json, node_required, start_board, start_node  # noqa: F401 (fixtures)

pytestmark = node_required

NAME = "py-restart-1"
QUEUES = ("waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation")
KEYS = ("WAITLIST_EXPIRY", "WAITLIST_NOTIFICATION", "PREFERENCE_CALCULATION")


def _poll(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Call `check` until it returns True (anything else describes what it saw)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}; last seen: {last!r}")


def _named_connections(port: int, prefix: str) -> list[str]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        return sorted(c["name"] for c in client.client_list() if c["name"].startswith(prefix + ":"))
    except redis.RedisError as exc:
        return [repr(exc)]
    finally:
        client.close()


def _names_back(port: int, prefix: str, before: list[str]) -> bool | list[str]:
    now = _named_connections(port, prefix)
    return True if set(now) >= set(before) else now


def _stats_lists_worker(env: dict[str, str], python_named: bool = False) -> bool | str:
    """True when `bullwait stats --json` counts one worker on every queue (as a Python one if asked)."""
    proc = invoke_cli(env, "stats", "--json")
    if proc.returncode != 0:
        return proc.stderr.strip()[-300:]
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    seen = {q: (rows[q]["workers"], rows[q]["workers_node"], rows[q]["workers_python"]) for q in QUEUES}
    ok = all(v == (1, 0, 1) if python_named else v[0] == 1 for v in seen.values())
    return True if ok else json.dumps(seen)


def _node_lists_worker(env: dict[str, str]) -> bool | str:
    view = node_json(env, "compat/inspect.js")
    names = {key: [w["rawname"] for w in view[key]["workers"]] for key in KEYS}
    return True if all(any(n.endswith(f":w:{NAME}") for n in ns) for ns in names.values()) else json.dumps(names)


def _health_sees_worker(port: int) -> bool | str:
    """True when the worker's /health/queues answers 200 with one worker on every queue."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/queues", timeout=5) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return repr(exc)
    doc = json.loads(body)
    workers = {q["name"]: q["workers"] for q in doc["queues"]}
    return True if status == 200 and set(workers.values()) == {1} else f"{status} {body[:300]!r}"


def _monitoring_port(log: str) -> int:
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "monitoring server listening":
            return int(json.loads(line)["port"])
    raise AssertionError(f"no 'monitoring server listening' line:\n{log}")


def _board_lists_worker(board: Any) -> bool | str:
    seen = {}
    for queue in QUEUES:
        reply = board.get(f"/api/queues/{queue}/workers")
        ok = reply.status_code == 200
        seen[queue] = [w.get("name") for w in reply.json().get("workers", [])] if ok else reply.status_code
    return True if all(isinstance(v, list) and NAME in v for v in seen.values()) else json.dumps(seen)


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.2f}s"


async def _add_timers(settings: Settings) -> None:
    async with Producer(settings) as producer:
        for key in QueueKey:
            await producer.queue(key).add("parked", {}, {"delay": 3_600_000, "jobId": f"parked-{key.value}"})


def test_worker_listed_again_after_redis_restart(
    tmp_path: Path, env: dict[str, str], prefix: str, start_worker: Any, start_board: Any
) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    # AOF fsynced on every write: the timer added below survives the SIGKILL.
    server = RedisServer(port=port, data_dir=str(data_dir), extra_args=["--appendfsync", "always"]).start()
    url = f"redis://127.0.0.1:{port}/0"
    own = dict(env, REDIS_URL=url)
    try:
        worker = start_worker(extra_env={"REDIS_URL": url, "BULLWAIT_WORKER_NAME": NAME})
        board = start_board(extra_env={"REDIS_URL": url})
        health_port = _monitoring_port(worker.log())
        # A timer on every queue: a queue with jobs and no worker answers 503 on /health/queues.
        asyncio.run(_add_timers(Settings(redis_url=url, bullmq_prefix=prefix)))
        _poll(lambda: _health_sees_worker(health_port), 20, "/health/queues sees the worker before the restart")
        _poll(lambda: _board_lists_worker(board), 20, "Bull Board lists the worker before the restart")
        before = _named_connections(port, prefix)

        server.kill()
        server = RedisServer(port=port, data_dir=str(data_dir), extra_args=["--appendfsync", "always"]).start()
        restarted = time.monotonic()
        node_named = [n for n in before if not n.startswith(tuple(f"{prefix}:{q}:" for q in QUEUES))]
        _poll(lambda: _names_back(port, prefix, node_named), 20, f"the Node-style names {node_named} back")
        print(f"\nNode-style names back in CLIENT LIST {_since(restarted)} after the restart")
        # Node and Bull Board see the blocking connection, which the worker loop reconnects at once.
        _poll(lambda: _node_lists_worker(own), 20, "Node Queue.getWorkers() lists the worker again")
        _poll(lambda: _board_lists_worker(board), 20, "Bull Board lists the worker again")
        _poll(lambda: _health_sees_worker(health_port), 20, "/health/queues answers 200 with the worker counted")
        _poll(lambda: _stats_lists_worker(own), 20, "`bullwait stats --json` counts the worker again")
        print(f"Node getWorkers, Bull Board, /health/queues and stats count it {_since(restarted)} after the restart")
        # The Python-named main connection reconnects on its next command (within one blocking wait when idle).
        _poll(lambda: _names_back(port, prefix, before), 20, f"all the worker's connection names {before} back")
        print(f"all names back in CLIENT LIST {_since(restarted)} after the restart")
        _poll(lambda: _stats_lists_worker(own, python_named=True), 20, "`bullwait stats` sees a Python worker again")
        assert worker.proc.poll() is None
        assert worker.terminate() == 0
    finally:
        server.cleanup()
