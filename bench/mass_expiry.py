"""Mass expiry: n offer timers all due within the same 10 s (a morning's offers, set at once).

For each runtime (bullwait's full worker runtime with the real `check-expiry` processor, the
same with a processor that does nothing, and Node bullmq's Worker), on a fresh prefix and
stock `hz 10`, `rounds` times interleaved:

1. the worker starts at the expiry queue's deployed concurrency (`WAITLIST_EXPIRY_CONCURRENCY`'s
   default, the NestJS module's 5), and a PING probe (bench/probe.py, its own process and
   connection) starts;
2. n `check-expiry` timers are added with that runtime's bulk path (`Producer.schedule_expiries`
   / Node `addBulk`: chunks of 1,000, three in flight; the same payloads and options), due
   evenly over `window` s starting `lead` s ahead so that adding ends first (`next_lead`);
3. the run ends when the queue is empty (delayed, prioritized, wait and active).

Measured: lateness (a job's start minus its due time, recorded by the worker) p50/p99/max;
drain, from the window's end to the last job's completion (the newest score of the
completed/failed sets, the worker's own finish time); Redis blocking, per phase (adding, the
idle wait before the window, the expiry run): the probe's PING round trips (max, p99,
count over 50 ms), `LATENCY LATEST` (`latency-monitor-threshold 10`; it times a MULTI block
as one command), the longest SLOWLOG entry (every command over 1 ms is logged; SLOWLOG lists
the commands inside a MULTI block, not the block) and the mean time per EXEC and EVALSHA
(`INFO commandstats`). The maxima also count the machine being too busy to run Redis or the
probe (the idle phase shows how much of that there is); the means move far less with load.

As in the `timers` section, no waitlist entries exist, so each `check-expiry` finds its entry
missing: bullwait's real processor pays one store lookup (a Lua script, a round trip) per job.
Node's processor does nothing, so bullwait also runs with a processor that does nothing
("bullwait-noop"): the like-for-like comparison of the two workers.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.procs import cpu_seconds, node_available, run_node_enqueue, start_probe, start_worker
from bench.scenarios import QUEUE, Bench, _enqueue_timers, pct
from bullwait.settings import Settings
from bullwait.waitlist.catalog import SPECS, QueueKey
from bullwait.waitlist.producer import IN_FLIGHT_CHUNKS

BLOCK_MS = 50  # longest Redis may be blocked
SLOWLOG_US = 1000


def window_stats(samples: list[list[float]] | list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """The probe's round trips taken in [start, end): count, p50, p99, max and how many over BLOCK_MS."""
    rtts = [rtt for at, rtt in samples if start <= at < end]
    return {
        "n": len(rtts),
        "p50": pct(rtts, 50) if rtts else None,
        "p99": pct(rtts, 99) if rtts else None,
        "max": max(rtts) if rtts else None,
        f"over{BLOCK_MS}": sum(1 for r in rtts if r > BLOCK_MS),
    }


def lateness(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
    }


def _redis_side(b: Bench) -> dict[str, Any]:
    """What Redis itself logged since the last `_reset`: LATENCY LATEST and the longest SLOWLOG entries."""
    latest = b.client.execute_command("LATENCY", "LATEST")
    events = {str(e[0]): {"maxMs": int(e[3]), "latestMs": int(e[2])} for e in latest}
    slow = sorted(b.client.slowlog_get(100_000), key=lambda e: e["duration"], reverse=True)
    top = [{"ms": round(e["duration"] / 1000, 1), "command": _text(e["command"])[:80]} for e in slow[:3]]
    stats = b.client.info("commandstats")
    # Mean time per call, which a busy machine inflates far less than the maxima: a MULTI block
    # (EXEC) holds Redis for all its commands; EVALSHA is one BullMQ script.
    per_call = {
        name: {"calls": int(st["calls"]), "meanMs": round(float(st["usec_per_call"]) / 1000, 3)}
        for name in ("exec", "evalsha")
        if (st := stats.get(f"cmdstat_{name}"))
    }
    latency_max = max((e["maxMs"] for e in events.values()), default=0)
    slow_max = top[0]["ms"] if top else 0.0
    return {
        "latency": events,
        "latencyMaxMs": latency_max,
        "slowlogMaxMs": slow_max,
        "slowlogTop": top,
        f"slowlogOver{BLOCK_MS}": sum(1 for e in slow if e["duration"] > BLOCK_MS * 1000),
        "slowlogEntries": len(slow),
        "perCall": per_call,
        "blockedMaxMs": max(latency_max, slow_max),
    }


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _reset(b: Bench) -> None:
    b.client.slowlog_reset()
    b.client.execute_command("LATENCY", "RESET")
    b.client.config_resetstat()


def _add(b: Bench, kind: str, prefix: str, n: int, base: float, window: float) -> None:
    """n timers due evenly over [base, base + window), with `kind`'s bulk path."""
    if kind == "node":
        run_node_enqueue(
            redisUrl=b.url,
            prefix=prefix,
            queue=QUEUE,
            n=n,
            chunk=1000,
            dueAtMs=round(base * 1000),
            spreadMs=round(window * 1000),
            jobOpts=SPECS[QueueKey.WAITLIST_EXPIRY].default_job_options(),
            ids="short",
            inFlight=IN_FLIGHT_CHUNKS,
        )
    else:
        asyncio.run(_enqueue_timers(b.settings(prefix), n, base, window))


def _pending(b: Bench, prefix: str) -> int:
    pipe = b.client.pipeline(transaction=False)
    pipe.zcard(f"{prefix}:{QUEUE}:delayed")
    pipe.zcard(f"{prefix}:{QUEUE}:prioritized")
    pipe.llen(f"{prefix}:{QUEUE}:wait")
    pipe.llen(f"{prefix}:{QUEUE}:active")
    return int(sum(pipe.execute()))


def _last_finished_ms(b: Bench, prefix: str) -> float | None:
    """The newest finish time BullMQ recorded (completed and failed sets are scored by it)."""
    scores = [
        s
        for state in ("completed", "failed")
        for _, s in b.client.zrange(f"{prefix}:{QUEUE}:{state}", -1, -1, withscores=True)
    ]
    return max(scores) if scores else None


# label -> (runtime, processor): bullwait's real check-expiry, bullwait with a processor that
# does nothing (as Node's bench processor), Node.
RUNS: dict[str, tuple[str, str]] = {
    "bullwait": ("bullwait", "real"),
    "bullwait-noop": ("bullwait", "noop"),
    "node": ("node", "noop"),
}


def _run(b: Bench, label: str, n: int, window: float, lead: float, concurrency: int, log: Any) -> dict[str, Any]:
    kind, processor = RUNS[label]
    prefix = b.fresh()
    load = os.getloadavg()[0]
    worker = start_worker(
        kind, redisUrl=b.url, prefix=prefix, mode="timers", concurrency=concurrency, queue=QUEUE, processor=processor
    )
    probe = start_probe(b.url, interval_ms=5)
    try:
        _reset(b)
        add_start = time.time()
        base = add_start + lead
        _add(b, kind, prefix, n, base, window)
        add_end = time.time()
        added = b.client.zcard(f"{prefix}:{QUEUE}:delayed")
        redis_add = _redis_side(b)
        _reset(b)
        cpu0 = (cpu_seconds(worker.proc.pid), cpu_seconds(b.redis_pid) if b.redis_pid else None)
        deadline = time.monotonic() + lead + window + max(300.0, n / 100)
        while time.time() < base or _pending(b, prefix):
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                left = _pending(b, prefix)
                raise RuntimeError(f"mass expiry {label}: {left} jobs left; worker log:\n{worker.stderr()}")
            time.sleep(0.05)
        emptied = time.time()
        cpu1 = (cpu_seconds(worker.proc.pid), cpu_seconds(b.redis_pid) if b.redis_pid else None)
        redis_run = _redis_side(b)
    finally:
        samples = probe.stop().get("samples", [])
        out = worker.stop()
    end = base + window
    last_ms = _last_finished_ms(b, prefix)
    cpu_us = [round((c1 - c0) / n * 1e6) if c0 is not None and c1 is not None else None for c0, c1 in zip(cpu0, cpu1)]
    row = {
        "runtime": kind,
        "processor": processor,
        "n": n,
        "added": added,
        "processed": out.get("processed"),
        "failed": b.client.zcard(f"{prefix}:{QUEUE}:failed"),
        "concurrency": concurrency,
        "loadAverage": load,
        "leadS": lead,
        "addS": round(add_end - add_start, 2),
        # Negative: adding ran into the window (its first timers were due before it ended).
        "addMarginS": round(base - add_end, 2),
        "lateness": lateness(out.get("lateness", [])),
        "drainS": round(last_ms / 1000 - end, 2) if last_ms is not None else None,
        "emptiedS": round(emptied - end, 2),
        "workerCpuUsPerJob": cpu_us[0],
        "redisCpuUsPerJob": cpu_us[1],
        "probe": {
            "add": window_stats(samples, add_start, add_end),
            "idle": window_stats(samples, add_end, base),
            "run": window_stats(samples, base, emptied),
        },
        "redisAdd": redis_add,
        "redisRun": redis_run,
    }
    late, run_probe = row["lateness"], row["probe"]["run"]
    log(
        f"expiry {label}: n={late['n']} lateness p50={late['p50']:.0f} p99={late['p99']:.0f} max={late['max']:.0f} ms, "
        f"drain {row['drainS']} s; PING max {run_probe['max']} ms (idle {row['probe']['idle']['max']}), "
        f"Redis blocked max {redis_run['blockedMaxMs']} ms (adding {redis_add['blockedMaxMs']})"
    )
    return row


def next_lead(n: int, add_seconds: list[float]) -> float:
    """Seconds between the start of adding and the window: twice the longest add so far plus
    5 s (a busy machine adds several times slower), before any add 10 s + 1 s per 2,000 timers."""
    if not add_seconds:
        return 10.0 + n / 2_000
    return round(max(5.0 + n / 10_000, 2 * max(add_seconds) + 5.0), 1)


def median_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median drain (the earlier of the two middle ones for an even count)."""
    ordered = sorted(rows, key=lambda r: (r["drainS"] is None, r["drainS"] or 0.0))
    return ordered[(len(ordered) - 1) // 2]


def mass_expiry(b: Bench, log: Any) -> dict[str, Any]:
    """Each runtime `rounds` times, interleaved so that a noisy minute hits all of them; per
    runtime the table shows the round with the median drain, the JSON every round."""
    n, rounds = (20_000, 1) if b.quick else (100_000, 3)
    rounds = b.rounds or rounds
    window = 10.0
    concurrency = int(Settings.model_fields["waitlist_expiry_concurrency"].default)
    labels = [label for label, (kind, _) in RUNS.items() if kind != "node" or node_available()]
    b.client.config_set("latency-monitor-threshold", 10)
    b.client.config_set("slowlog-log-slower-than", SLOWLOG_US)
    b.client.config_set("slowlog-max-len", 100_000)
    results: dict[str, Any] = {"n": n, "windowS": window, "concurrency": concurrency, "rounds": rounds}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    adds: list[float] = []
    try:
        for _ in range(rounds):
            for label in labels:
                row = _run(b, label, n, window, next_lead(n, adds), concurrency, log)
                adds.append(row["addS"])
                runs[label].append(row)
    finally:
        b.client.config_set("latency-monitor-threshold", 0)
        b.client.config_set("slowlog-log-slower-than", 10_000)
        b.client.config_set("slowlog-max-len", 128)
    for label, rows in runs.items():
        results[label] = dict(median_run(rows), allRounds=[_brief(r) for r in rows])
    return results


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "loadAverage": row["loadAverage"],
        "lateness": row["lateness"],
        "drainS": row["drainS"],
        "addMarginS": row["addMarginS"],
        "blockedRunMs": row["redisRun"]["blockedMaxMs"],
        "blockedAddMs": row["redisAdd"]["blockedMaxMs"],
        "pingRunMaxMs": row["probe"]["run"]["max"],
    }
