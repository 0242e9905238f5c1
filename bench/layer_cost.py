"""CPU of bullwait's processing layer alone, per job, without Redis or an event loop.

    python -m bench.layer_cost [--jobs N] [--rounds R] [--profile]

Runs N `check-expiry` jobs through what `bullwait worker` runs for each job once bullmq
hands it over: `WorkerPool`'s processor -> `dispatch` (payload validation, the registered
no-op processor, the `job completed` JSON log line written to /dev/null through
`SafeStream`) and the Prometheus `JobMetrics` observer. The processor never awaits, so
each job's coroutine finishes on its first step: no event loop, no sockets, the same
instructions every run. That makes it fit for `--profile` (cProfile) and for
instruction counts under valgrind, which stay comparable on a loaded machine where timings
do not:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python -m bench.layer_cost --jobs 2000 --rounds 1
    (the "Collected" line of --rounds 1 minus that of --rounds 0, over 2000: per job)

It also prints the process CPU (user+sys) per job, best of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from bullmq.job import Job

from bullwait.logs import configure_logging
from bullwait.monitoring.metrics import JobMetrics
from bullwait.runtime.dispatch import Context, Registry
from bullwait.runtime.runner import WorkerPool
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.waitlist.payloads import ExpiryJob


async def noop(payload: ExpiryJob, ctx: Context) -> None:
    return None


# What a Job reads from its queue when built; the layer never calls the queue.
_QUEUE = SimpleNamespace(backend=None, qualifiedName="layer:waitlist-expiry")


def _jobs(n: int) -> list[Job]:
    """Jobs as `BullwaitWorker` hands them over: wire data, `raw_data_size` set."""
    now = datetime.now(UTC)
    later = now + timedelta(minutes=15)
    jobs = []
    for i in range(n):
        data = ExpiryJob(
            waitlist_id=f"w-{i}",
            slot_id=f"slot-{i % 500}",
            customer_id=f"cust-{i}",
            salon_id=f"salon-{i % 200}",
            notified_at=now,
            expires_at=later,
        ).to_wire_json()
        job = Job(_QUEUE, "check-expiry", json.loads(data), {"attempts": 3}, f"expiry_w-{i}")  # type: ignore[arg-type]
        job.raw_data_size = len(data)
        jobs.append(job)
    return jobs


def _processor() -> Any:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", bullmq_prefix="layer")
    registry = Registry()
    registry.register(QueueKey.WAITLIST_EXPIRY, "check-expiry", ExpiryJob, noop)
    name = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    metrics = JobMetrics(queues=[queue_name(k, settings) for k in QueueKey], expiry_queue=name)
    pool = WorkerPool(settings, registry, [QueueKey.WAITLIST_EXPIRY], observer=metrics)
    return pool._processor(QueueKey.WAITLIST_EXPIRY, name)


def run(process: Any, jobs: list[Job]) -> None:
    for job in jobs:
        coro = process(job, "token")
        try:
            coro.send(None)
        except StopIteration:
            continue
        raise RuntimeError("the processor awaited something: this harness needs one that does not")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over the same jobs (0: build, warm up)")
    parser.add_argument("--profile", action="store_true", help="cProfile one round: most own time first")
    args = parser.parse_args()
    configure_logging("info", json=True, stream=open(os.devnull, "w"))
    process = _processor()
    jobs = _jobs(args.jobs)
    run(process, jobs[:50])  # first-use caches (structlog's bound logger, label children)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, process, jobs)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    best = float("inf")
    for _ in range(args.rounds):
        begin = time.process_time()
        run(process, jobs)
        best = min(best, time.process_time() - begin)
    if args.rounds:
        per_job = best / max(len(jobs), 1) * 1e6
        print(
            f"{len(jobs)} jobs: {per_job:.1f} us CPU per job (best of {args.rounds} rounds), "
            f"{1e6 / per_job:,.0f} jobs per CPU-second"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
