"""The benchmark's six measurements. Each returns plain data; `report.py` makes the table."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bench.procs import Proc, cpu_seconds, node_available, run_node_enqueue, start_worker
from bullwait.settings import Settings
from bullwait.waitlist.catalog import SPECS, QueueKey
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, SlotDetails
from bullwait.waitlist.producer import IN_FLIGHT_CHUNKS, Producer

QUEUE = "waitlist-expiry"
# The Cloud API's default throughput, WHATSAPP_MAX_MESSAGES_PER_SECOND in every notify run.
PER_SECOND = 80
RUNTIMES = ("bullwait", "stock", "node")


@dataclass
class Bench:
    """The private redis-server of this run and the knobs of full / quick."""

    url: str
    quick: bool
    client: redis.Redis
    counter: int = 0
    redis_pid: int | None = None
    # Throughput variants (labels as in the results, e.g. "bullwait", "bare", "node") and notify runs
    # ("sweep", "perSalon", "manySalons") to run; None: all.
    variants: tuple[str, ...] | None = None
    # Growth: pending timers per run (None: the section's own, bench/growth.py).
    sizes: tuple[int, ...] | None = None
    rounds: int | None = None

    def fresh(self, hz: int = 10) -> str:
        """An empty database and a new key prefix; `hz` as asked."""
        self.client.flushall()
        self.client.config_set("hz", hz)
        self.counter += 1
        return f"b{self.counter}"

    def settings(self, prefix: str) -> Settings:
        return Settings(redis_url=self.url, bullmq_prefix=prefix)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def runtimes(self) -> tuple[str, ...]:
        return RUNTIMES if node_available() else RUNTIMES[:2]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "over": {str(ms): sum(1 for v in values if v > ms) for ms in (20, 50, 100)},
    }


def uuid_like(kind: int, i: int) -> str:
    """A 36-character id shaped like a UUID, deterministic (node-compat/bench/enqueue.js
    builds the same ones): database ids are usually this long, the default ids are short."""
    return f"{kind:08x}-0000-4000-8000-{i:012x}"


def expiry(i: int, expires_at: datetime, now: datetime | None = None, ids: str = "short") -> ExpiryJob:
    """The NestJS module's expiry payload; `ids` "short" (w-1, slot-1, ...) or "uuid" (uuid_like)."""
    if ids == "uuid":
        names = (uuid_like(1, i), uuid_like(2, i % 500), uuid_like(3, i), uuid_like(4, i % 200))
    else:
        names = (f"w-{i}", f"slot-{i % 500}", f"cust-{i}", f"salon-{i % 200}")
    return ExpiryJob(
        waitlist_id=names[0],
        slot_id=names[1],
        customer_id=names[2],
        salon_id=names[3],
        notified_at=now or datetime.now(UTC),
        expires_at=expires_at,
    )


# 1 + 6 ------------------------------------------------------------------ timers


async def _enqueue_timers(settings: Settings, n: int, base: float, spread: float, ids: str = "short") -> float:
    """Seconds to schedule n timers with one `schedule_expiries` call, in chunks of 1,000.

    The payloads are a generator, so they are built (and validated) inside the timed
    region, a chunk at a time, while Redis adds the chunks before (as a producer that
    reads timers from a database or a file would)."""
    started = time.perf_counter()
    async with Producer(settings) as producer:
        now = datetime.now(UTC)
        payloads = (expiry(i, datetime.fromtimestamp(base + spread * i / n, UTC), now, ids) for i in range(n))
        await producer.schedule_expiries(payloads, 1000)
    return time.perf_counter() - started


def timers(b: Bench, log: Any) -> dict[str, Any]:
    """Lateness of check-expiry jobs (start - due), per runtime, stock hz 10 and hz 100.

    n timers are due uniformly over `spread` s starting `lead` s from now; the worker
    runs for the first `observe` s of that window (so all n are pending at the start).
    """
    n, spread, lead, observe = (10_000, 60.0, 4.0, 12.0) if b.quick else (100_000, 300.0, 20.0, 30.0)
    results: dict[str, Any] = {"n": n, "spreadS": spread, "observeS": observe}
    for hz in (10, 100):
        for kind in b.runtimes():
            prefix = b.fresh(hz)
            worker = start_worker(kind, redisUrl=b.url, prefix=prefix, mode="timers", concurrency=5, queue=QUEUE)
            base = time.time() + lead
            enq = asyncio.run(_enqueue_timers(b.settings(prefix), n, base, spread))
            time.sleep(max(0.0, base + observe - time.time()))
            out = worker.stop()
            late = out.get("lateness", [])
            row = {"hz": hz, "runtime": kind, "enqueueS": round(enq, 2), **summary(late)}
            if kind == "bullwait":
                row["procMs"] = summary(out.get("procMs", []))
            results[f"hz{hz}:{kind}"] = row
            log(
                f"timers hz={hz} {kind}: n={row['n']} p50={row['p50']:.1f} p99={row['p99']:.1f} max={row['max']:.1f} ms"
            )
    return results


# 2 -------------------------------------------------------------- throughput


async def _fill(settings: Settings, n: int, opts: dict[str, Any] | None = None) -> None:
    async with Producer(settings) as producer:
        now = datetime.now(UTC)
        later = now + timedelta(minutes=15)
        jobs = []
        for i in range(n):
            options = producer.job_options(QueueKey.WAITLIST_EXPIRY, job_id=f"expiry_w-{i}")
            options.update(opts or {})
            jobs.append((expiry(i, later, now), options))
        await producer.add_bulk(QueueKey.WAITLIST_EXPIRY, jobs)


def _drain_rate(b: Bench, prefix: str, n: int, worker: Proc, timeout: float) -> dict[str, Any]:
    """Jobs/s from the last poll that saw all n jobs waiting to the queue being empty,
    and the CPU the worker (with its child processes) and Redis spent per job meanwhile.

    Redis is read every 5 ms; starting at the last full poll (not the first one that
    saw a job gone) can only make the rate look lower, never higher. A worker that took
    jobs before the first poll is timed from that poll, over the jobs still left then
    (waiting + active): counting all n over that shorter time read 1.7M jobs/s.
    """
    wait, active = f"{prefix}:{QUEUE}:wait", f"{prefix}:{QUEUE}:active"
    deadline = time.monotonic() + timeout

    def cpu_now() -> tuple[float | None, float | None]:
        return cpu_seconds(worker.proc.pid), cpu_seconds(b.redis_pid) if b.redis_pid else None

    base: tuple[float, int, tuple[float | None, float | None]] | None = None  # (time, jobs left, cpu)
    started = False
    while time.monotonic() < deadline:
        pipe = b.client.pipeline(transaction=False)
        pipe.llen(wait)
        pipe.llen(active)
        waiting, running = pipe.execute()
        now = time.perf_counter()
        if not started:
            if waiting >= n or base is None:
                base = (now, waiting + running, cpu_now())
            started = waiting < n
        if started and waiting == 0 and running == 0:
            assert base is not None
            begin, jobs, cpu_begin = base
            seconds = max(now - begin, 1e-3)
            per_job = [
                round((end - first) / max(jobs, 1) * 1e6) if end is not None and first is not None else None
                for first, end in zip(cpu_begin, cpu_now())
            ]
            return {
                "jobs": jobs,
                "seconds": round(seconds, 3),
                "rate": round(jobs / seconds, 1),
                "workerCpuUsPerJob": per_job[0],
                "redisCpuUsPerJob": per_job[1],
                # Unlike jobs/s, comparable across machines of a similar CPU (and under load).
                "workerJobsPerCpuSecond": round(1e6 / per_job[0]) if per_job[0] else None,
            }
        time.sleep(0.005)
    raise RuntimeError(f"queue not drained within {timeout}s")


def throughput(b: Bench, log: Any) -> dict[str, Any]:
    """No-op jobs/s per runtime at concurrency 10 and 50: the median of `rounds` runs each,
    the runtimes interleaved within a round so that a noisy minute hits all of them."""
    n, rounds = (15_000, 2) if b.quick else (50_000, 3)
    variants: list[tuple[str, str, dict[str, Any]]] = [(k, k, {}) for k in b.runtimes()]
    variants.append(("bare", "bare", {}))
    variants.append(("bullwait x2 processes", "bullwait", {"processes": 2}))
    if _has_uvloop():
        variants.append(("bullwait + uvloop", "bullwait", {"uvloop": True}))
    if b.variants:
        variants = [v for v in variants if v[0] in b.variants]
    results: dict[str, Any] = {"n": n, "rounds": rounds}
    for concurrency in (10, 50):
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
        for _ in range(rounds):
            for label, kind, extra in variants:
                prefix = b.fresh()
                asyncio.run(_fill(b.settings(prefix), n))
                worker = start_worker(
                    kind,
                    redisUrl=b.url,
                    prefix=prefix,
                    mode="throughput",
                    concurrency=concurrency,
                    queue=QUEUE,
                    **extra,
                )
                try:
                    runs[label].append(_drain_rate(b, prefix, n, worker, timeout=300))
                finally:
                    worker.stop()
        for label, rows in runs.items():
            row = dict(_median_row(rows), concurrency=concurrency, runtime=label, rates=[r["rate"] for r in rows])
            results[f"c{concurrency}:{label}"] = row
            log(
                f"throughput c={concurrency} {label}: {row['rate']:.0f} jobs/s (runs {row['rates']}), "
                f"CPU us/job worker {row['workerCpuUsPerJob']} redis {row['redisCpuUsPerJob']} "
                f"(runs {[r['workerCpuUsPerJob'] for r in rows]}), "
                f"{row['workerJobsPerCpuSecond']} jobs per worker CPU-second"
            )
    return results


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate; CPU figures are the medians over all runs."""
    ordered = sorted(rows, key=lambda r: r["rate"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    for key in ("workerCpuUsPerJob", "redisCpuUsPerJob"):
        values = sorted(r[key] for r in rows if r.get(key) is not None)
        row[key] = values[(len(values) - 1) // 2] if values else None
    row["workerJobsPerCpuSecond"] = round(1e6 / row["workerCpuUsPerJob"]) if row["workerCpuUsPerJob"] else None
    return row


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401

        return True
    except ImportError:
        return False


# 4 + 5 ------------------------------------------------------ enqueue, memory


# Runs of the memory measurement: (runtime, ids, hash-max-listpack-value). 64 is Redis's
# default; 512 is what `bullwait doctor` recommends (job hashes stay listpacks).
ENQUEUE_RUNS: dict[str, tuple[str, str, int]] = {
    "bullwait": ("bullwait", "short", 64),
    "node": ("node", "short", 64),
    "bullwait+listpack": ("bullwait", "short", 512),
    "node+listpack": ("node", "short", 512),
    "bullwait+uuid": ("bullwait", "uuid", 64),
    "node+uuid": ("node", "uuid", 64),
    "bullwait+uuid+listpack": ("bullwait", "uuid", 512),
    "node+uuid+listpack": ("node", "uuid", 512),
}


def _enqueue(
    b: Bench, runtime: str, prefix: str, n: int, ids: str, opts: dict[str, Any], in_flight: int = IN_FLIGHT_CHUNKS
) -> float:
    """Add n expiry timers due in 15 minutes with `runtime`'s addBulk; returns seconds.

    Both runtimes send chunks of 1,000 with `IN_FLIGHT_CHUNKS` chunks in flight (Node:
    that many `addBulk` promises pending), so the comparison is like for like; Node is
    also timed awaiting each `addBulk` before building the next (`in_flight` 1), the way
    most Node code calls it."""
    if runtime == "node":
        return float(
            run_node_enqueue(
                redisUrl=b.url,
                prefix=prefix,
                queue=QUEUE,
                n=n,
                chunk=1000,
                delayMs=15 * 60_000,
                jobOpts=opts,
                ids=ids,
                inFlight=in_flight,
            )["seconds"]
        )
    return asyncio.run(_enqueue_timers(b.settings(prefix), n, time.time() + 15 * 60, 0.0, ids))


def enqueue_and_memory(b: Bench, log: Any) -> dict[str, Any]:
    n = 20_000 if b.quick else 100_000
    results: dict[str, Any] = {"n": n}
    opts = SPECS[QueueKey.WAITLIST_EXPIRY].default_job_options()
    for kind, (runtime, ids, listpack_value) in ENQUEUE_RUNS.items():
        if runtime == "node" and not node_available():
            continue
        prefix = b.fresh()
        b.client.config_set("hash-max-listpack-value", listpack_value)
        # A few timers first, then FLUSHALL (which keeps Redis's script cache): BullMQ's
        # Lua scripts are loaded once per Redis, not per timer, and only the first run of
        # a runtime would have paid for them.
        _enqueue(b, runtime, prefix + "warm", 10, ids, opts)
        b.client.flushall()
        before = b.used_memory()
        seconds = _enqueue(b, runtime, prefix, n, ids, opts)
        delayed_key = f"{prefix}:{QUEUE}:delayed"
        delayed = b.client.zcard(delayed_key)
        per_timer = (b.used_memory() - before) / n
        sample_id = b.client.zrange(delayed_key, 1, 1)[0]
        sample = b.client.hgetall(f"{prefix}:{QUEUE}:{sample_id}")
        results[kind] = {
            "ids": ids,
            "hashMaxListpackValue": listpack_value,
            "seconds": round(seconds, 2),
            "rate": round(n / seconds, 1),
            "delayed": delayed,
            "bytesPerTimer": round(per_timer),
            # Where the bytes are (MEMORY USAGE; the zset's figure leaves out its dict entries).
            "jobHashBytes": b.client.memory_usage(f"{prefix}:{QUEUE}:{sample_id}", samples=0),
            "jobHashEncoding": b.client.object("encoding", f"{prefix}:{QUEUE}:{sample_id}"),
            "delayedZsetBytesPerTimer": round(b.client.memory_usage(delayed_key, samples=0) / n, 1),
            "eventsStreamBytesPerTimer": round(b.client.memory_usage(f"{prefix}:{QUEUE}:events", samples=0) / n, 1),
            "jobFieldBytes": sum(len(k) + len(v) for k, v in sample.items()),
            "sampleJob": sample,
        }
        log(f"enqueue {kind}: {n / seconds:.0f} timers/s, {per_timer:.0f} B/timer in Redis")
    b.client.config_set("hash-max-listpack-value", 64)
    if node_available():
        b.fresh()
        seconds = _enqueue(b, "node", "awaited", n, "short", opts, in_flight=1)
        results["nodeAwaited"] = {"seconds": round(seconds, 2), "rate": round(n / seconds, 1)}
        log(f"enqueue node, each addBulk awaited: {n / seconds:.0f} timers/s")
    results["completed"] = _retained_completed(b, 2_000 if b.quick else 10_000)
    log(f"memory: {results['completed']['bytesPerCompletedJob']} B per retained completed job")
    return results


def _run_to_completion(b: Bench, prefix: str, m: int) -> None:
    """The bullwait worker runs the m waiting jobs of `prefix`, then stops."""
    worker = start_worker("bullwait", redisUrl=b.url, prefix=prefix, mode="timers", concurrency=10, queue=QUEUE)
    try:
        _drain_rate(b, prefix, m, worker, timeout=300)
    finally:
        worker.stop()


def _retained_completed(b: Bench, m: int) -> dict[str, Any]:
    """Bytes per completed job kept with its return value (check-expiry's summary).

    A small run first, then FLUSHALL: the add and worker Lua scripts stay cached and are
    not counted per job. The events stream's share is reported apart: BullMQ caps it at
    ~10,000 entries per queue, so its share per job shrinks as more jobs are kept.
    """
    prefix = b.fresh()
    asyncio.run(_fill(b.settings(prefix + "warm"), 20, {"removeOnComplete": False}))
    _run_to_completion(b, prefix + "warm", 20)
    b.client.flushall()
    before = b.used_memory()
    asyncio.run(_fill(b.settings(prefix), m, {"removeOnComplete": False}))
    waiting = (b.used_memory() - before) / m
    _run_to_completion(b, prefix, m)
    completed = b.client.zcard(f"{prefix}:{QUEUE}:completed")
    if completed != m:
        raise RuntimeError(f"{completed} of {m} jobs completed: the bench worker failed jobs, see its log")
    total = b.used_memory() - before
    events = b.client.memory_usage(f"{prefix}:{QUEUE}:events", samples=0) or 0
    sample = b.client.hgetall(f"{prefix}:{QUEUE}:expiry_w-1")
    return {
        "n": m,
        "kept": completed,
        "bytesPerWaitingJob": round(waiting),
        "bytesPerCompletedJob": round(total / completed),
        "eventsStreamBytesPerJob": round(events / completed, 1),
        "bytesPerCompletedJobWithoutEvents": round((total - events) / completed),
        "jobHashBytes": b.client.memory_usage(f"{prefix}:{QUEUE}:expiry_w-1", samples=0),
        "jobHashEncoding": b.client.object("encoding", f"{prefix}:{QUEUE}:expiry_w-1"),
        "sampleJob": sample,
    }


# 3 -------------------------------------------------------------- notifications


def _notification(i: int, salon: int) -> NotificationJob:
    return NotificationJob(
        waitlist_id=f"w-{i}",
        customer_id=f"cust-{i}",
        customer_phone=f"+3460{i:07d}",
        salon_id=f"salon-{salon}",
        slot_details=SlotDetails(
            date="2026-12-01",
            time="10:30",
            master_id="m-1",
            master_name="Ana",
            service_id="s-1",
            service_name="Corte",
            duration=30,
            price=20.0,
        ),
    )


async def _fill_notifications(settings: Settings, n: int, salons: int) -> dict[str, str]:
    phone_salon = {}
    async with Producer(settings) as producer:
        jobs = []
        for i in range(n):
            job = _notification(i, i % salons)
            phone_salon[job.customer_phone] = job.salon_id
            jobs.append((job, producer.job_options(QueueKey.WAITLIST_NOTIFICATION)))
        await producer.add_bulk(QueueKey.WAITLIST_NOTIFICATION, jobs)
    return phone_salon


def _max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _rate(times: list[float]) -> float:
    span = (times[-1] - times[0]) if len(times) > 1 else 0.0
    return round((len(times) - 1) / span, 1) if span > 0 else float("nan")


def _ceiling(n: int, salons: int, per_second: int, salon_limit: int, window_ms: int) -> dict[str, Any]:
    """The most sends/s the limits allow over a run (first send to last), and 95% of it.

    `global`: `per_second`. `salonsLongRun`: salons x limit / window, what the salons can
    take on average over many windows. `salonsOwn`: the bound from each salon's own k
    offers, (n - 1) sends over the (ceil(k / limit) - 1) windows its last one must wait.
    The salons bind only when a salon has more offers than its limit; then the ceiling is
    the least of the three (`salonsOwn` is never below `salonsLongRun` and tends to it as
    runs grow; over a run of a few windows it is the truer bound). Otherwise every salon's
    offers fit in one window and the ceiling is the global limit."""
    bounds: dict[str, float | None] = {"global": float(per_second), "salonsLongRun": None, "salonsOwn": None}
    most = math.ceil(n / salons)  # offers of the busiest salon (the runs deal them out evenly)
    binds = bool(salon_limit) and most > salon_limit
    if salon_limit:
        bounds["salonsLongRun"] = salons * salon_limit * 1000 / window_ms
    if binds:
        bounds["salonsOwn"] = (n - 1) / ((math.ceil(most / salon_limit) - 1) * window_ms / 1000)
    applied = {k: v for k, v in bounds.items() if v is not None and (k == "global" or binds)}
    binding = min(applied, key=lambda k: applied[k])
    return {
        **{k: round(v, 1) if v is not None else None for k, v in bounds.items()},
        "offersPerSalon": most,
        "ceiling": round(applied[binding], 1),
        "binding": binding,
        "target": round(0.95 * applied[binding], 1),
    }


def _steady(times: list[float], skip_s: float) -> dict[str, Any]:
    """Sends/s from `skip_s` after the first send to the last: the run without its ramp-up."""
    if not times:
        return {"skipS": skip_s, "n": 0, "rate": float("nan")}
    rest = [t for t in times if t >= times[0] + skip_s]
    return {"skipS": skip_s, "n": len(rest), "rate": _rate(rest)}


def _per_second(times: list[float]) -> list[int]:
    """Sends in each whole second from the first send (the run's shape, for the JSON)."""
    if not times:
        return []
    counts = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        counts[int(t - times[0])] += 1
    return counts


def _notify_run(
    b: Bench,
    fake_url: str,
    n: int,
    salons: int,
    concurrency: int,
    salon_limit: int,
    window_ms: int,
    processes: int = 1,
    binding: int = 2_000,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """`n` notifications over `salons` through the real processor; what the fake API saw.
    `ramp_s`: also the rate without the first `ramp_s` s of sends (`steady`)."""
    import httpx

    prefix = b.fresh()
    phone_salon = asyncio.run(_fill_notifications(b.settings(prefix), n, salons))
    seen_before = len(httpx.get(fake_url + "/__stats").json())
    worker = start_worker(
        "bullwait",
        redisUrl=b.url,
        prefix=prefix,
        mode="notify",
        concurrency=concurrency,
        fakeUrl=fake_url,
        perSecond=PER_SECOND,
        salonLimit=salon_limit,
        salonWindowMs=window_ms,
        processes=processes,
    )
    cpu_begin = cpu_seconds(worker.proc.pid), cpu_seconds(b.redis_pid) if b.redis_pid else None
    keys = [f"{prefix}:waitlist-notification:{k}" for k in ("wait", "active", "delayed", "prioritized")]
    deadline = time.monotonic() + (60 + n / 20)
    while time.monotonic() < deadline:
        pipe = b.client.pipeline(transaction=False)
        pipe.llen(keys[0])
        pipe.llen(keys[1])
        pipe.zcard(keys[2])
        pipe.zcard(keys[3])
        if sum(pipe.execute()) == 0:
            break
        time.sleep(0.05)
    cpu_end = cpu_seconds(worker.proc.pid), cpu_seconds(b.redis_pid) if b.redis_pid else None
    worker.stop()
    records = httpx.get(fake_url + "/__stats").json()[seen_before:]
    times = sorted(r["t"] for r in records)
    phones = [str(r["to"]) for r in records]
    failed = b.client.zcard(f"{prefix}:waitlist-notification:failed")
    salon_of = {phone.lstrip("+"): salon for phone, salon in phone_salon.items()}
    by_salon: dict[str, list[float]] = {}
    for r in records:
        by_salon.setdefault(salon_of.get(str(r["to"]), "?"), []).append(r["t"])
    salon_max = max((_max_in_window(ts, window_ms / 1000) for ts in by_salon.values()), default=0)
    cpu_ms = [
        round((end - first) / max(len(records), 1) * 1000, 2) if end is not None and first is not None else None
        for first, end in zip(cpu_begin, cpu_end)
    ]
    return {
        "n": n,
        "salons": salons,
        "concurrency": concurrency,
        "processes": processes,
        "salonLimit": salon_limit,
        "salonWindowMs": window_ms,
        "sent": len(records),
        "failed": failed,
        "duplicates": len(phones) - len(set(phones)),
        "missing": len(set(salon_of) - set(phones)),
        "seconds": round(times[-1] - times[0], 2) if times else 0,
        "rate": _rate(times),
        **_ceiling(n, salons, PER_SECOND, salon_limit, window_ms),
        "steady": _steady(times, ramp_s) if ramp_s else None,
        "maxPerSecond": _max_in_window(times, 1.0),
        # The same counted on when the fake's process read each request (its own scheduling
        # delays bunch those together on a loaded machine).
        "maxPerSecondRead": _max_in_window([r.get("tApp", r["t"]) for r in records], 1.0),
        # While every salon still has room, the global limit is the binding one.
        "bindingN": min(binding, len(times)),
        "bindingRate": _rate(times[:binding]),
        "maxPerSalonWindow": salon_max,
        # CPU ms per send while the queue drained: the worker's process tree and redis-server.
        "workerCpuMsPerSend": cpu_ms[0],
        "redisCpuMsPerSend": cpu_ms[1],
        "perSecond": _per_second(times),
    }


# The notify section's runs, for `--variants` (all when none is named).
NOTIFY_RUNS = ("sweep", "perSalon", "manySalons")
# Sends left out of the many-salons run's steady rate: the worker's first second, while it
# opens its HTTP connections and Redis loads its scripts, and the first global window,
# which starts empty (docs/performance.md, Reading the results).
RAMP_S = 2.0


def notifications(b: Bench, log: Any) -> dict[str, Any]:
    """The real send-slot-available processor and WhatsApp sender against the fake Cloud API
    (150 ms per request), global limit 80/s: a concurrency sweep with only the global limit
    binding; 5,000 notifications over 200 salons with the NestJS module's per-salon limit
    (10 per 60 s), whose first 2,000 sends are bound by the global limit and the rest by the
    salons (200 x 10 / 60 s = 33/s); 10,000 over 2,000 salons (5 each, so the salons never
    bind) at the default concurrency, against 95% of the global limit."""
    fake = Proc(
        [sys.executable, "-m", "bullwait.dev.fake_whatsapp", "--port", "0", "--latency", "0.15"], None
    ).wait_ready()
    fake_url = f"http://127.0.0.1:{fake.ready_line.split()[1]}"
    results: dict[str, Any] = {"latencyMs": 150}
    named = [r for r in NOTIFY_RUNS if r in (b.variants or ())]
    runs = named or list(NOTIFY_RUNS)
    defaults = Settings()
    c = defaults.waitlist_notification_concurrency
    limit, window_ms = defaults.waitlist_notification_rate_limit, defaults.waitlist_notification_rate_window_ms
    try:
        if "sweep" in runs:
            _sweep(b, fake_url, results, log)
        if "perSalon" in runs:
            n, salons = (2_000, 200) if b.quick else (5_000, 200)
            row = _notify_run(b, fake_url, n, salons, c, limit, window_ms)
            results["perSalon"] = row
            log(
                f"notify {n} over {salons} salons c={c}: first {row['bindingN']} at {row['bindingRate']}/s, whole "
                f"run {row['rate']} sends/s (ceiling {row['ceiling']}), max {row['maxPerSecond']}/s, "
                f"salon max {row['maxPerSalonWindow']}, dup {row['duplicates']}, missing {row['missing']}"
            )
        if "manySalons" in runs:
            n, salons = (2_000, 400) if b.quick else (10_000, 2_000)
            row = _notify_run(b, fake_url, n, salons, c, limit, window_ms, binding=n, ramp_s=RAMP_S)
            results["manySalons"] = row
            log(
                f"notify {n} over {salons} salons c={c}: whole run {row['rate']} sends/s, after {RAMP_S:g} s "
                f"{row['steady']['rate']}/s (ceiling {row['ceiling']}, {row['binding']}; target {row['target']}), "
                f"max {row['maxPerSecond']}/s, salon max {row['maxPerSalonWindow']}, dup {row['duplicates']}, "
                f"missing {row['missing']}, failed {row['failed']}, CPU ms/send worker {row['workerCpuMsPerSend']} "
                f"redis {row['redisCpuMsPerSend']}"
            )
    finally:
        fake.proc.terminate()
        fake.proc.wait()
    return results


def _sweep(b: Bench, fake_url: str, results: dict[str, Any], log: Any) -> None:
    """Only the global limit binding, at concurrency 10 to 24: the least that reaches 76/s."""
    sweep = (10, 12, 16, 20, 24)
    per = 800 if b.quick else 1_600
    for c in sweep:
        row = _notify_run(b, fake_url, per, 200, c, 0, 60_000)
        results[f"global:c{c}"] = row
        log(
            f"notify global only c={c}: {row['rate']} sends/s, max {row['maxPerSecond']} in 1 s "
            f"(read {row['maxPerSecondRead']}), dup {row['duplicates']}"
        )
    results["concurrencyFor95"] = min((c for c in sweep if results[f"global:c{c}"]["rate"] >= 76), default=None)
