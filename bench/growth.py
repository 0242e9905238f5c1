"""The growth section: what 10,000, 100,000 and 1,000,000 pending timers (--quick: the first
two) cost each runtime, and whether reading a queue and running its due timers stay as fast.

Per size, per runtime (bullwait's `Producer.schedule_expiries`, Node bullmq's `addBulk`), on a
flushed Redis with a prefix of its own:

- fill: N timers due 1 to 2 hours from now (none falls due during the run): timers/s, and
  bytes per timer from the `used_memory` delta (the add scripts loaded, then FLUSHALL, first);
- readers, with the N pending: `/metrics` of a `bullwait serve` subprocess (wall time of each
  scrape, and `bullmq_redis_scrape_seconds`, the server's own Redis read); `bullwait stats
  --json` and `bullwait doctor --json` as subprocesses (wall time, of which Python's start-up
  and bullwait's imports are a fixed part, measured alone as `import bullwait.cli.main`) and
  the same reads in this process (`Ops.stats`, `diagnose`); Bull Board's queue API (the real
  board, node-compat/board/server.js, the requests its UI makes);
- lateness: BATCH timers due soon among the N pending, run by the runtime's own worker
  (bullwait with the real check-expiry processor, or Node's), lateness as the timers section
  measures it (processor start - due time).

Readers are runtime-independent (they read Redis), so they run on both fills: the Node rows
show that what a Node producer wrote reads as fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.procs import NODE_DIR, Proc, node_available, run_node_enqueue, start_worker
from bench.scenarios import QUEUE, Bench, expiry, summary
from bullwait.dev.embedded import free_port
from bullwait.settings import Settings
from bullwait.waitlist.catalog import SPECS, QueueKey
from bullwait.waitlist.producer import Producer

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
DUE_IN_S, DUE_SPREAD_S = 3600.0, 3600.0  # the N pending: due 1 to 2 hours from now
BATCH, LEAD_S, SPREAD_S = 2_000, 3.0, 10.0  # timers due soon: from LEAD_S on, over SPREAD_S
SCRAPES = 15  # HTTP reads per reader (after two warm-up reads)
CLI_RUNS = 3  # subprocess runs per command
LATENESS_ROUNDS, LATENESS_ROUNDS_QUICK = 5, 3
IN_PROCESS_RUNS = 7
BOARD_VIEWS = {
    # The overview page (every queue's counts), a queue's page ("latest": a page of each state),
    # and its delayed tab: the requests Bull Board's UI polls.
    "overview": {},
    "latest": {"activeQueue": QUEUE, "status": "latest", "page": "1", "jobsPerPage": "10"},
    "delayed": {"activeQueue": QUEUE, "status": "delayed", "page": "1", "jobsPerPage": "10"},
}


def growth(b: Bench, log: Any) -> dict[str, Any]:
    sizes = b.sizes or (QUICK_SIZES if b.quick else SIZES)
    runtimes = ("bullwait", "node") if node_available() else ("bullwait",)
    results: dict[str, Any] = {
        "sizes": list(sizes),
        "runtimes": list(runtimes),
        "batch": BATCH,
        "leadS": LEAD_S,
        "spreadS": SPREAD_S,
        "hz": 10,
        "cliStartup": _cli_startup(_env(b, "unused")),
    }
    startup = results["cliStartup"]
    log(
        f"growth: python + bullwait CLI imports alone {startup['medianMs']:.0f} ms, {startup['cpuMedianMs']:.0f} ms CPU"
    )
    for n in sizes:
        for runtime in runtimes:
            prefix = b.fresh()
            row: dict[str, Any] = {"n": n, "runtime": runtime, "loadAverageStart": round(os.getloadavg()[0], 2)}
            row["enqueue"] = _fill(b, runtime, prefix, n)
            log(
                f"growth {n:,} {runtime}: {row['enqueue']['rate']:.0f} timers/s, "
                f"{row['enqueue']['bytesPerTimer']} B/timer"
            )
            row["readers"] = _readers(b, prefix, n)
            r = row["readers"]
            log(
                f"growth {n:,} {runtime}: /metrics {r['metrics']['medianMs']:.1f} ms (max {r['metrics']['maxMs']:.1f}, "
                f"redis read {r['metrics']['redisReadMedianMs']:.1f}), stats {r['stats']['medianMs']:.0f} ms "
                f"(in process {r['inProcess']['statsMedianMs']:.1f}), doctor {r['doctor']['medianMs']:.0f} ms "
                f"(in process {r['inProcess']['doctorMedianMs']:.1f}), "
                + (
                    f"board latest {r['board']['latest']['medianMs']:.1f} ms"
                    if r.get("board")
                    else "no board (node-compat not installed)"
                )
            )
            row["lateness"] = _lateness(b, runtime, prefix, n)
            late = row["lateness"]
            log(
                f"growth {n:,} {runtime}: lateness of {late['n']}, median round p50 {late['p50']:.1f} "
                f"p99 {late['p99']:.1f} ms (rounds' p99 {late['p99s']}; Redis's slowest command "
                f"{late['redisSlowestMs']} ms)"
            )
            row["loadAverageEnd"] = round(os.getloadavg()[0], 2)
            results[f"{n}:{runtime}"] = row
        b.client.flushall()  # 1M timers hold over a GB: none kept into the next size
    return results


# --- fill ----------------------------------------------------------------------------


async def _schedule(settings: Settings, n: int, first: int, base: float, spread: float) -> float:
    """Seconds for `schedule_expiries` of n timers (ids from `first` on) due from `base` over `spread` s."""
    started = time.perf_counter()
    async with Producer(settings) as producer:
        now = datetime.now(UTC)
        payloads = (expiry(first + i, datetime.fromtimestamp(base + spread * i / n, UTC), now) for i in range(n))
        await producer.schedule_expiries(payloads, 1000)
    return time.perf_counter() - started


def _add(b: Bench, runtime: str, prefix: str, n: int, first: int, lead: float, spread: float) -> float:
    """Add n timers with `runtime`'s bulk path; seconds. Three chunks of 1,000 in flight each."""
    if runtime == "node":
        opts = SPECS[QueueKey.WAITLIST_EXPIRY].default_job_options()
        out = run_node_enqueue(
            redisUrl=b.url,
            prefix=prefix,
            queue=QUEUE,
            n=n,
            first=first,
            chunk=1000,
            delayMs=int(lead * 1000),
            spreadMs=int(spread * 1000),
            jobOpts=opts,
            ids="short",
            inFlight=3,
        )
        return float(out["seconds"])
    return asyncio.run(_schedule(b.settings(prefix), n, first, time.time() + lead, spread))


def _fill(b: Bench, runtime: str, prefix: str, n: int) -> dict[str, Any]:
    # The add scripts loaded first (FLUSHALL keeps them): they are Redis's, not the timers'.
    _add(b, runtime, prefix + "warm", 10, 0, DUE_IN_S, DUE_SPREAD_S)
    b.client.flushall()
    before = b.used_memory()
    seconds = _add(b, runtime, prefix, n, 0, DUE_IN_S, DUE_SPREAD_S)
    memory = b.client.info("memory")
    delayed_key = f"{prefix}:{QUEUE}:delayed"
    delayed = int(b.client.zcard(delayed_key))
    if delayed != n:
        raise RuntimeError(f"{runtime} added {delayed} of {n} timers")
    return {
        "seconds": round(seconds, 2),
        "rate": round(n / seconds, 1),
        "delayed": delayed,
        "bytesPerTimer": round((int(memory["used_memory"]) - before) / n),
        "usedMemory": int(memory["used_memory"]),
        "usedMemoryRss": int(memory["used_memory_rss"]),
        "delayedZsetBytesPerTimer": round((b.client.memory_usage(delayed_key, samples=0) or 0) / n, 1),
    }


# --- readers -------------------------------------------------------------------------


def _env(b: Bench, prefix: str) -> dict[str, str]:
    """The environment of a child bullwait or Node process: the bench's Redis and prefix only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "BULLMQ_", "BULLWAIT_", "BULL_BOARD_"))}
    env.update(
        REDIS_URL=b.url,
        BULLMQ_PREFIX=prefix,
        QUEUE_LOG_LEVEL="warning",
        QUEUE_MONITORING_ENABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _ms(values: list[float]) -> dict[str, Any]:
    return {
        "runs": len(values),
        "medianMs": round(statistics.median(values), 2),
        "minMs": round(min(values), 2),
        "maxMs": round(max(values), 2),
    }


def _cli(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU ms (user + system) of `python -m bullwait.cli.main ARGV`, run from an empty
    directory (no `.env` read). CPU time moves much less than wall time on a busy machine."""
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as cwd:
        before = _children_cpu()
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bullwait.cli.main", *argv] if argv else [sys.executable, "-c", _IMPORT_CLI],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return (time.perf_counter() - started) * 1000, (_children_cpu() - before) * 1000, proc


_IMPORT_CLI = "import bullwait.cli.main"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli_startup(env: dict[str, str]) -> dict[str, Any]:
    """Python's start-up and the CLI's imports, which every `bullwait` command pays first."""
    wall, cpu = [], []
    for _ in range(CLI_RUNS):
        ms, cpu_ms, proc = _cli([], env)
        if proc.returncode != 0:
            raise RuntimeError(f"{_IMPORT_CLI} failed: {proc.stderr[-2000:]}")
        wall.append(ms)
        cpu.append(cpu_ms)
    return dict(_ms(wall), cpuMedianMs=round(statistics.median(cpu), 1))


def _stats_cli(env: dict[str, str], n: int) -> dict[str, Any]:
    times, cpu = [], []
    for _ in range(CLI_RUNS):
        ms, cpu_ms, proc = _cli(["stats", "--json"], env)
        if proc.returncode != 0:
            raise RuntimeError(f"bullwait stats exited {proc.returncode}: {proc.stderr[-2000:]}")
        delayed = {q["name"]: q["delayed"] for q in json.loads(proc.stdout)}
        if delayed.get(QUEUE) != n:
            raise RuntimeError(f"bullwait stats read {delayed.get(QUEUE)} delayed, not {n}")
        times.append(ms)
        cpu.append(cpu_ms)
    return dict(_ms(times), cpuMedianMs=round(statistics.median(cpu), 1))


def _doctor_cli(env: dict[str, str]) -> dict[str, Any]:
    times: list[float] = []
    cpu: list[float] = []
    not_ok: list[str] = []
    for _ in range(CLI_RUNS):
        ms, cpu_ms, proc = _cli(["doctor", "--json"], env)
        report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
        if report is None:
            raise RuntimeError(f"bullwait doctor exited {proc.returncode} without a report: {proc.stderr[-2000:]}")
        checks = report.get("checks", [])
        if any(c.get("name") == "redis" and c.get("status") == "fail" for c in checks):
            raise RuntimeError(f"bullwait doctor could not read Redis: {checks}")
        not_ok = [f"{c.get('name')}: {c.get('status')}" for c in checks if c.get("status") != "ok"]
        times.append(ms)
        cpu.append(cpu_ms)
    return dict(_ms(times), cpuMedianMs=round(statistics.median(cpu), 1), exitCode=proc.returncode, notOk=not_ok)


async def _in_process(settings: Settings, n: int) -> dict[str, Any]:
    """`Ops.stats` and `diagnose` on an open connection: the reads without any start-up."""
    from bullwait.ops.doctor import diagnose
    from bullwait.ops.queues import Ops

    stats_ms, doctor_ms = [], []
    async with await Ops.open(settings) as ops:
        await ops.stats()  # loads the reader script
        for _ in range(IN_PROCESS_RUNS):
            started = time.perf_counter()
            snaps = await ops.stats()
            stats_ms.append((time.perf_counter() - started) * 1000)
        delayed = {s.name: s.delayed for s in snaps}
        if delayed.get(QUEUE) != n:
            raise RuntimeError(f"Ops.stats read {delayed.get(QUEUE)} delayed, not {n}")
        for _ in range(IN_PROCESS_RUNS):
            started = time.perf_counter()
            await diagnose(ops)
            doctor_ms.append((time.perf_counter() - started) * 1000)
    return {
        "runs": IN_PROCESS_RUNS,
        "statsMedianMs": round(statistics.median(stats_ms), 2),
        "statsMaxMs": round(max(stats_ms), 2),
        "doctorMedianMs": round(statistics.median(doctor_ms), 2),
        "doctorMaxMs": round(max(doctor_ms), 2),
    }


def _get_times(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> tuple[list[float], str]:
    """Wall ms of SCRAPES GETs (a new connection each, as a scraper's), after two warm-up ones."""
    times, body = [], ""
    for i in range(SCRAPES + 2):
        started = time.perf_counter()
        response = client.get(url, params=params)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        body = response.text
        if i >= 2:
            times.append(elapsed)
    return times, body


def _wait_http(url: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.proc.args[:4]} exited {proc.proc.returncode}:\n{proc.stderr()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{proc.stderr()}")


def _scrape_metrics(env: dict[str, str], n: int) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as cwd:
        argv = [sys.executable, "-m", "bullwait.cli.main", "serve", "--port", str(port)]
        server = Proc(argv, None, cwd=Path(cwd), env=env)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health/live", server)
            # Limits pool no connection: the server closes each one, as it does for Prometheus.
            with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                times, _ = _get_times(client, f"http://127.0.0.1:{port}/metrics")
                reads = []
                for _ in range(SCRAPES):
                    body = client.get(f"http://127.0.0.1:{port}/metrics").text
                    reads.append(_metric(body, "bullmq_redis_scrape_seconds") * 1000)
        finally:
            server.stop(timeout=30)
    delayed = _metric(body, "bullmq_jobs_delayed", f'queue="{QUEUE}"')
    if delayed != n:
        raise RuntimeError(f"/metrics shows {delayed} delayed, not {n}")
    return dict(
        _ms(times),
        redisReadMedianMs=round(statistics.median(reads), 2),
        redisReadMaxMs=round(max(reads), 2),
        bodyBytes=len(body.encode()),
    )


def _metric(body: str, name: str, labels: str = "") -> float:
    for line in body.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith(name + "_"):
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError(f"/metrics has no {name}{{{labels}}}")


def _board(b: Bench, prefix: str, n: int) -> dict[str, Any] | None:
    """The real Bull Board (node-compat/board/server.js, auth off, read-only) on the prefix."""
    if not node_available():
        return None
    port = free_port()
    env = dict(_env(b, prefix), BULL_BOARD_PORT=str(port), BULL_BOARD_AUTH="off", BULL_BOARD_READ_ONLY="true")
    board = Proc(["node", "board/server.js"], None, cwd=NODE_DIR, env=env).wait_ready(word=b"bull board listening")
    out: dict[str, Any] = {}
    try:
        api = f"http://127.0.0.1:{port}/admin/queues/api/queues"
        with httpx.Client(timeout=30) as client:
            for view, params in BOARD_VIEWS.items():
                times, body = _get_times(client, api, params or None)
                queue = next(q for q in json.loads(body)["queues"] if q["name"] == QUEUE)
                if queue["counts"]["delayed"] != n:
                    raise RuntimeError(f"Bull Board shows {queue['counts']['delayed']} delayed, not {n}")
                out[view] = _ms(times)
    finally:
        board.stop(timeout=30)
    return out


def _readers(b: Bench, prefix: str, n: int) -> dict[str, Any]:
    env = _env(b, prefix)
    return {
        "metrics": _scrape_metrics(env, n),
        "stats": _stats_cli(env, n),
        "doctor": _doctor_cli(env),
        "inProcess": asyncio.run(_in_process(b.settings(prefix), n)),
        "board": _board(b, prefix, n),
    }


# --- lateness ------------------------------------------------------------------------


def _lateness(b: Bench, runtime: str, prefix: str, n: int) -> dict[str, Any]:
    """`rounds` batches, each run by a fresh worker of `runtime`; the round of median p99
    is the figure (one busy second on a shared machine moves one round's p99, not the
    median's), with every round's p99 and all rounds' lateness together beside it."""
    rounds = LATENESS_ROUNDS_QUICK if b.quick else LATENESS_ROUNDS
    runs = [_lateness_round(b, runtime, prefix, n, n + i * BATCH) for i in range(rounds)]
    lateness = [v for run in runs for v in run.pop("lateness")]
    median = sorted(runs, key=lambda r: r["p99"])[(len(runs) - 1) // 2]
    return dict(
        median,
        rounds=len(runs),
        p99s=[round(r["p99"], 1) for r in runs],
        pooled=summary(lateness),
        redisSlowestMs=max(r["redisSlowestMs"] for r in runs),
    )


def _lateness_round(b: Bench, runtime: str, prefix: str, n: int, first: int) -> dict[str, Any]:
    """BATCH timers due from LEAD_S s on, over SPREAD_S s, among the n pending (ids from
    `first` on), run by `runtime`'s worker at concurrency 5 until all have run.

    Redis's slow log (commands over 10 ms, its default) is read too: on a busy machine
    even a ZADD shows up there when redis-server waits for a core."""
    b.client.slowlog_reset()
    worker = start_worker(runtime, redisUrl=b.url, prefix=prefix, mode="timers", concurrency=5, queue=QUEUE)
    try:
        _add(b, runtime, prefix, BATCH, first, LEAD_S, SPREAD_S)
        added = time.monotonic()
        time.sleep(LEAD_S + SPREAD_S + 1.0)
        keys = [f"{prefix}:{QUEUE}:{k}" for k in ("wait", "active", "delayed")]
        deadline = added + LEAD_S + SPREAD_S + 60
        while True:
            pipe = b.client.pipeline(transaction=False)
            pipe.llen(keys[0])
            pipe.llen(keys[1])
            pipe.zcard(keys[2])
            waiting, active, delayed = pipe.execute()
            if waiting == 0 and active == 0 and delayed <= n:
                break
            if time.monotonic() > deadline:
                left = f"wait {waiting}, active {active}, delayed {delayed}"
                raise RuntimeError(f"{runtime}: the batch was not run in time ({left})")
            time.sleep(0.1)
    finally:
        out = worker.stop()
    late = list(out.get("lateness", []))
    if len(late) != BATCH:
        raise RuntimeError(f"{runtime} worker ran {len(late)} timers, not the {BATCH} due")
    slow = b.client.slowlog_get(128)
    return dict(
        summary(late),
        lateness=late,
        pendingAfter=int(delayed),
        redisSlowCommands=len(slow),
        redisSlowestMs=round(max((int(e["duration"]) for e in slow), default=0) / 1000, 1),
    )
