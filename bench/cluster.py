"""The cluster section: bullwait's producer and `bullwait worker` on a local 3-master Redis
Cluster beside the run's single redis-server, on the same machine.

Per target (single, cluster): timers/s enqueued (`Producer.schedule_expiries`, chunks of
1,000) and bytes per pending timer (INFO used_memory delta and MEMORY USAGE on the master
that owns the queue's slot); then check-expiry jobs (the real processor; no waitlist entry
behind them) drained by a `bullwait worker` subprocess (jobs/s, Redis CPU per job from INFO
cpu deltas on that master and on every master); then, with the same worker, timers due over
a few seconds (lateness = processedOn - due, read from the kept job hashes).

The cluster here has no replicas: a replica costs its master the replication stream's CPU,
which a production figure must add.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from bench.procs import ROOT, cpu_seconds
from bench.scenarios import QUEUE, Bench, expiry, summary
from bullwait.dev.cluster import LocalCluster
from bullwait.dev.embedded import free_port
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

MASTERS = 3


@dataclass
class Target:
    """One Redis topology under test: how bullwait reaches it and the master of the queue's slot."""

    name: str
    env: dict[str, str]
    settings: Settings
    master: redis.Redis
    all: list[redis.Redis]

    def flush(self) -> None:
        for client in self.all:
            client.flushall()

    def redis_cpu(self, every_master: bool = False) -> float:
        """CPU seconds of the queue's master (or of every master: the store's keys spread)."""
        total = 0.0
        for client in self.all if every_master else [self.master]:
            info = client.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return total

    def used_memory(self) -> int:
        return int(self.master.info("memory")["used_memory"])


def _target(name: str, prefix: str, single_url: str | None, cluster: LocalCluster | None) -> Target:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "BULLMQ_", "BULLWAIT_"))}
    base.update(
        BULLMQ_PREFIX=prefix,
        BULLWAIT_STORE_PREFIX="bench-store:",
        QUEUE_LOG_LEVEL="warning",
        METRICS_PORT="0",
        QUEUE_MONITORING_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if cluster is not None:
        # REDIS_HOST/PORT at a closed port: anything that ignored the cluster setting would find
        # nothing there rather than the machine's own Redis.
        closed = free_port()
        base.update(REDIS_CLUSTER_NODES=cluster.nodes_setting, REDIS_QUEUE_DB="0")
        base.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(closed))
        settings = Settings(
            redis_cluster_nodes=cluster.nodes_setting,
            redis_queue_db=0,
            bullmq_prefix=prefix,
            redis_host="127.0.0.1",
            redis_port=closed,
        )
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in cluster.nodes]
        owner = cluster.master_for(f"{prefix}:{QUEUE}:wait")
        master = next(c for c in clients if c.connection_pool.connection_kwargs["port"] == owner)
        return Target(name, base, settings, master, clients)
    assert single_url is not None
    base.update(REDIS_URL=single_url)
    client = redis.Redis.from_url(single_url, decode_responses=True)
    return Target(name, base, Settings(redis_url=single_url, bullmq_prefix=prefix), client, [client])


# --- the three measurements ---------------------------------------------------------


async def _schedule(settings: Settings, n: int) -> float:
    """Seconds for `schedule_expiries` of n timers due in 15 minutes (payloads built inside)."""
    started = time.perf_counter()
    async with Producer(settings) as producer:
        now = datetime.now(UTC)
        later = now + timedelta(minutes=15)
        await producer.schedule_expiries((expiry(i, later, now) for i in range(n)), 1000)
    return time.perf_counter() - started


def enqueue(t: Target, n: int) -> dict[str, Any]:
    asyncio.run(_schedule(t.settings, 10))  # loads the add script on the master first
    t.flush()
    before = t.used_memory()
    seconds = asyncio.run(_schedule(t.settings, n))
    prefix = t.settings.bullmq_prefix
    delayed = f"{prefix}:{QUEUE}:delayed"
    pending = int(t.master.zcard(delayed))
    sample = t.master.zrange(delayed, 1, 1)[0]
    return {
        "n": n,
        "pending": pending,
        "seconds": round(seconds, 2),
        "timersPerSecond": round(n / seconds, 1),
        "bytesPerTimer": round((t.used_memory() - before) / n),
        "jobHashBytes": t.master.memory_usage(f"{prefix}:{QUEUE}:{sample}", samples=0),
        "delayedZsetBytesPerTimer": round((t.master.memory_usage(delayed, samples=0) or 0) / n, 1),
    }


async def _fill(settings: Settings, n: int, due_in_s: float = 0.0, spread_s: float = 0.0) -> None:
    """n check-expiry jobs kept on completion (for their processedOn); delayed when `due_in_s`."""
    start_ms = time.time() * 1000 + due_in_s * 1000

    def jobs(producer: Producer) -> Any:
        now = datetime.now(UTC)
        for i in range(n):
            opts = producer.job_options(QueueKey.WAITLIST_EXPIRY, job_id=f"expiry_w-{i}")
            opts["removeOnComplete"] = False
            if due_in_s:
                opts["delay"] = max(0, int(start_ms + spread_s * 1000 * i / n - time.time() * 1000))
            yield expiry(i, now + timedelta(minutes=15), now), opts

    async with Producer(settings) as producer:
        await producer.add_bulk(QueueKey.WAITLIST_EXPIRY, jobs(producer))


class Worker:
    """`bullwait worker --queue waitlist-expiry` as a subprocess, its log in a temp file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-cluster-", suffix=".log", delete=False)
        argv = [sys.executable, "-m", "bullwait.cli.main", "worker", "--queue", QUEUE]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]


def _counts(t: Target) -> tuple[int, int, int]:
    prefix = f"{t.settings.bullmq_prefix}:{QUEUE}"
    pipe = t.master.pipeline(transaction=False)
    pipe.llen(f"{prefix}:wait")
    pipe.llen(f"{prefix}:active")
    pipe.zcard(f"{prefix}:completed")
    waiting, active, completed = pipe.execute()
    return int(waiting), int(active), int(completed)


def drain(t: Target, worker: Worker, n: int, timeout: float = 300) -> dict[str, Any]:
    """Jobs/s from the last poll that saw all n waiting to all n completed, and the CPU of the
    queue's master and of the worker per job meanwhile (as `scenarios._drain_rate`)."""
    deadline = time.monotonic() + timeout
    base: tuple[float, int, float, float, float | None] | None = None
    while time.monotonic() < deadline:
        waiting, active, completed = _counts(t)
        now = time.perf_counter()
        if completed == 0 and (waiting >= n or base is None):
            base = (now, waiting + active, t.redis_cpu(), t.redis_cpu(True), cpu_seconds(worker.proc.pid))
        if completed >= n:
            assert base is not None
            begin, jobs, redis0, every0, worker0 = base
            seconds = max(now - begin, 1e-3)
            worker1 = cpu_seconds(worker.proc.pid)
            return {
                "jobs": jobs,
                "seconds": round(seconds, 2),
                "jobsPerSecond": round(jobs / seconds, 1),
                "redisCpuUsPerJob": round((t.redis_cpu() - redis0) / max(jobs, 1) * 1e6),
                "redisCpuUsPerJobEveryMaster": round((t.redis_cpu(True) - every0) / max(jobs, 1) * 1e6),
                "workerCpuUsPerJob": round((worker1 - worker0) / max(jobs, 1) * 1e6)
                if worker0 is not None and worker1 is not None
                else None,
            }
        if worker.proc.poll() is not None:
            raise RuntimeError(f"bullwait worker exited {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(0.005)
    raise RuntimeError(f"{n} jobs not completed within {timeout}s (completed {_counts(t)[2]}):\n{worker.tail()}")


def lateness(t: Target, worker: Worker, m: int, lead: float, spread: float) -> dict[str, Any]:
    """m timers due uniformly over `spread` s from `lead` s on, run by the running worker."""
    t.flush()
    asyncio.run(_fill(t.settings, m, lead, spread))
    deadline = time.monotonic() + lead + spread + 120
    while _counts(t)[2] < m:
        if time.monotonic() > deadline or worker.proc.poll() is not None:
            raise RuntimeError(f"timers not all run (completed {_counts(t)[2]} of {m}):\n{worker.tail()}")
        time.sleep(0.1)
    prefix = f"{t.settings.bullmq_prefix}:{QUEUE}"
    pipe = t.master.pipeline(transaction=False)
    for i in range(m):
        pipe.hmget(f"{prefix}:expiry_w-{i}", "processedOn", "timestamp", "opts")
    # The due time from opts: the hash's own `delay` field is zeroed when the job is promoted.
    late = [float(p) - (float(ts) + float(json.loads(o).get("delay") or 0)) for p, ts, o in pipe.execute() if p and ts]
    return {"leadS": lead, "spreadS": spread, **summary(late)}


def run_target(t: Target, quick: bool, log: Any) -> dict[str, Any]:
    n_enqueue, n_drain, m_timers, spread = (50_000, 10_000, 3_000, 10.0) if quick else (200_000, 50_000, 20_000, 60.0)
    port = t.master.connection_pool.connection_kwargs["port"]
    out: dict[str, Any] = {"queueMaster": port}
    t.flush()
    out["enqueue"] = enqueue(t, n_enqueue)
    log(
        f"cluster/{t.name}: {out['enqueue']['timersPerSecond']:.0f} timers/s enqueued, "
        f"{out['enqueue']['bytesPerTimer']} B per pending timer"
    )
    t.flush()
    asyncio.run(_fill(t.settings, n_drain))
    worker = Worker(t.env)
    try:
        out["drain"] = drain(t, worker, n_drain)
        log(
            f"cluster/{t.name}: {out['drain']['jobsPerSecond']:.0f} jobs/s, Redis CPU "
            f"{out['drain']['redisCpuUsPerJob']} us/job on :{port}, worker {out['drain']['workerCpuUsPerJob']} us/job"
        )
        out["lateness"] = lateness(t, worker, m_timers, 3.0, spread)
        log(f"cluster/{t.name}: lateness p50 {out['lateness']['p50']:.0f} ms p99 {out['lateness']['p99']:.0f} ms")
    finally:
        worker.stop()
    t.flush()
    return out


def cluster(b: Bench, log: Any) -> dict[str, Any]:
    """The same three measurements on the run's single redis-server and on a local
    3-master cluster (one `{tag}` prefix: the queue on one master)."""
    results: dict[str, Any] = {"masters": MASTERS, "loadAverageStart": round(os.getloadavg()[0], 2)}
    b.fresh()
    results["single"] = run_target(_target("single", "{bwbench}", b.url, None), b.quick, log)
    c = LocalCluster(MASTERS).start()
    try:
        results["cluster"] = run_target(_target("cluster", "{bwbench}", None, c), b.quick, log)
    finally:
        c.stop()
    results["loadAverageEnd"] = round(os.getloadavg()[0], 2)
    return results
