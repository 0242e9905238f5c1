"""A `bullwait worker` on Redis Sentinel follows a failover without a restart.

Real processes: a master, a replica and three `redis-server --sentinel` (helpers/sentinel.py),
a `bullwait worker` subprocess configured with REDIS_SENTINELS only. After a graceful
`SENTINEL FAILOVER` the old master stays writable until the sentinels reconfigure it, so a
worker that only moves on errors keeps waiting there; after a crash its connections fail.
Either way a job added to the new master must complete, the move must come from the
sentinels' `+switch-master`, and the worker must stay visible by name on the new master.

The seconds from the switch to the first completion are printed (`-s` shows them); the
goal (<= 2 s) is reported, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from bullmq import Queue

from bullwait.engine.connection import NewestSentinel
from bullwait.engine.worker import node_client_name
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import PreferenceJob
from bullwait.waitlist.producer import Producer

from helpers.common import WorkerProcess
from helpers.jobdata import preference_data
from helpers.sentinel import WORKER_ENV, WORKER_NAME, SentinelSet, sentinel_env

QUEUE = "waitlist-preference-calculation"


@pytest.fixture
def topo() -> Iterator[SentinelSet]:
    with SentinelSet().start() as topology:
        yield topology


async def add_on(port: int, prefix: str, job_id: str) -> None:
    """Add a preference job straight to the node at `port` (the new master), not through Sentinel."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", bullmq_prefix=prefix)
    async with Producer(settings) as producer:
        await producer.add(
            QueueKey.PREFERENCE_CALCULATION,
            PreferenceJob.model_validate(preference_data(job_id)),
            job_id=job_id,
            removeOnComplete=False,
        )


async def completed_after(port: int, prefix: str, job_id: str, started: float, timeout: float = 60) -> float:
    """Seconds from `started` until `job_id` is completed on the node at `port`."""
    queue = Queue(QUEUE, {"connection": {"host": "127.0.0.1", "port": port, "db": 0}, "prefix": prefix})
    try:
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            state = await queue.getJobState(job_id)
            if state == "completed":
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} not completed on :{port} within {timeout}s (state {state})")
    finally:
        await queue.close()


def names_on(port: int, prefix: str) -> list[str]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    try:
        return sorted(c["name"] for c in client.client_list() if c["name"].startswith(prefix + ":"))
    finally:
        client.close()


def visible_names(prefix: str) -> set[str]:
    """The names the worker's preference-queue connections carry (Python and Node form)."""
    return {f"{prefix}:{QUEUE}:w:{WORKER_NAME}", node_client_name(prefix, QUEUE, WORKER_NAME)}


def start(env: dict[str, str], tmp_path: Path, name: str) -> WorkerProcess:
    worker = WorkerProcess(env, ["--queue", QUEUE], tmp_path / f"{name}.log")
    try:
        worker.wait_for_log("worker started", timeout=30)
    except BaseException:
        worker.kill()  # never leave a worker behind, e.g. one that cannot find Redis
        raise
    return worker


def follow(topo: SentinelSet, env: dict[str, str], tmp_path: Path, move: str) -> dict[str, Any]:
    prefix = env["BULLMQ_PREFIX"]
    worker = start(env, tmp_path, f"worker-{move}")
    try:
        first = topo.master_port()
        started = time.monotonic()
        asyncio.run(add_on(first, prefix, "before"))
        asyncio.run(completed_after(first, prefix, "before", started))
        # Let the worker go idle in its BZPOPMIN on the master, where a switch finds it.
        time.sleep(1.0)
        new = topo.failover() if move == "failover" else topo.crash_master()
        switched = time.monotonic()
        asyncio.run(add_on(new, prefix, f"after-{move}"))
        seconds = asyncio.run(completed_after(new, prefix, f"after-{move}", switched))
        print(f"\n{move}: first job completed on the new master {seconds:.2f} s after the switch was seen")
        deadline = time.monotonic() + 20
        while not visible_names(prefix) <= set(names_on(new, prefix)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert visible_names(prefix) <= set(names_on(new, prefix)), names_on(new, prefix)
        log = worker.log()
        assert "redis master switched, connections moved" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        return {"seconds": seconds, "old": first, "new": new}
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]


def test_worker_follows_graceful_failover(topo: SentinelSet, env: dict[str, str], tmp_path: Path) -> None:
    follow(topo, sentinel_env(env, topo, **WORKER_ENV), tmp_path, "failover")


def test_worker_follows_crashed_master(topo: SentinelSet, env: dict[str, str], tmp_path: Path) -> None:
    follow(topo, sentinel_env(env, topo, **WORKER_ENV), tmp_path, "crash")


async def newest_master(topo: SentinelSet) -> tuple[str, int]:
    manager = NewestSentinel(list(topo.sentinels), sentinel_kwargs={"socket_timeout": 5, "decode_responses": True})
    try:
        return await manager.discover_master("mymaster")
    finally:
        await manager.aclose()


def test_worker_follows_a_failover_with_its_first_sentinel_frozen(
    topo: SentinelSet, env: dict[str, str], tmp_path: Path
) -> None:
    """The failover watcher listens on every sentinel, as ioredis's failoverDetector does: with
    the first sentinel (the one a single subscription would use) frozen by SIGSTOP, its
    socket open and silent as when cut off, the switch still arrives as `+switch-master`
    from the others, and a job added to the new master completes."""
    senv = sentinel_env(env, topo, **WORKER_ENV)
    prefix = senv["BULLMQ_PREFIX"]
    worker = start(senv, tmp_path, "worker-frozen-sentinel")
    try:
        first = topo.master_port()
        started = time.monotonic()
        asyncio.run(add_on(first, prefix, "before"))
        asyncio.run(completed_after(first, prefix, "before", started))
        time.sleep(1.0)  # idle in its BZPOPMIN on the master
        with topo.freeze(0):
            lines = len(worker.log().splitlines())
            new = topo.failover(via=1)
            switched = time.monotonic()
            asyncio.run(add_on(new, prefix, "after-frozen"))
            asyncio.run(completed_after(new, prefix, "after-frozen", switched))
            events = [json.loads(x) for x in worker.log().splitlines()[lines:] if x.startswith("{")]
            # The frozen sentinel is asked, not waited for: it is marked late and the others answer.
            assert asyncio.run(newest_master(topo)) == ("127.0.0.1", new)
            assert f"127.0.0.1:{topo.sentinels[0][1]}" in NewestSentinel.late
        moves = [e for e in events if e["event"] == "redis master switched, connections moved"]
        done = [e for e in events if e["event"] == "job completed" and e.get("jobId") == "after-frozen"]
        if moves and done:
            seconds = datetime.fromisoformat(done[0]["timestamp"]) - datetime.fromisoformat(moves[0]["timestamp"])
            print(
                f"\nfirst sentinel frozen: job completed {seconds.total_seconds():.2f} s after the worker heard "
                "+switch-master"
            )
        frozen = f"127.0.0.1:{topo.sentinels[0][1]}"
        heard = [m for m in moves if m.get("source") == "+switch-master"]
        assert heard and all(m["via"] != frozen for m in heard), moves
        assert heard[0]["to"] == f"127.0.0.1:{new}", moves
        assert len(heard) == 1, f"one switch, announced by two sentinels, moved connections once: {moves}"
        assert "Traceback" not in worker.log(), worker.log()[-3000:]
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def monitor_port(worker: WorkerProcess) -> int:
    worker.wait_for_log("monitoring server listening")
    line = next(x for x in worker.log().splitlines() if "monitoring server listening" in x)
    return int(json.loads(line)["port"])


def test_no_master_fails_liveness_and_says_why(topo: SentinelSet, env: dict[str, str], tmp_path: Path) -> None:
    """Master and replica both down: no master anywhere. The worker is not live, /health/queues
    says why, the log has lines, not tracebacks; when the master is back, so is the worker."""
    senv = sentinel_env(env, topo, **WORKER_ENV)
    prefix = senv["BULLMQ_PREFIX"]
    worker = start(senv, tmp_path, "worker-nomaster")
    try:
        port = monitor_port(worker)
        assert http_get(port, "/health/live")[0] == 200
        master = topo.master_port()
        for node in topo.nodes:
            node.kill()
        down_at = len(worker.log().splitlines())
        deadline = time.monotonic() + 30
        status, doc = http_get(port, "/health/live")
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, doc = http_get(port, "/health/live")
        assert status == 503 and doc["status"] == "no-master", doc
        assert "did not answer" in doc["problem"] or "no reachable master" in doc["problem"], doc
        status, health = http_get(port, "/health/queues")
        assert status == 503 and health["problems"][0].startswith("redis: "), health
        # A few more lines of the outage, however long a loaded machine takes to write them.
        unreachable = "redis master unreachable, retrying"
        worker.wait_for_log(unreachable, count=worker.log().count(unreachable) + 4, timeout=60)
        outage = worker.log().splitlines()[down_at:]
        print(
            f"\nno master: {len(outage)} log lines in ~{time.monotonic() - deadline + 30:.0f} s:\n"
            + "\n".join(line[:200] for line in outage[:12])
        )
        assert "Traceback" not in "\n".join(outage)
        assert all(line.startswith("{") for line in outage), outage[:5]  # structured lines, nothing else
        # Not one line per connection and retry: each line stands for the attempts since the last.
        attempts = [json.loads(line)["attempts"] for line in outage if unreachable in line]
        assert len(attempts) >= 5 and sum(attempts) > len(attempts), attempts
        topo.restart(master)
        started = time.monotonic()
        asyncio.run(add_on(master, prefix, "back"))
        asyncio.run(completed_after(master, prefix, "back", started))
        assert http_get(port, "/health/live")[0] == 200
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]
