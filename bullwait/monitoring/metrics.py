"""Prometheus metrics: queue gauges read from Redis at scrape time, and this process's job counters.

Two sources, one registry:

- `QueueCollector` turns a `QueueSnapshot` list (one Redis pipeline per scrape, read by
  `bullwait.ops.snapshot`, the reader behind `bullwait stats` and `doctor` too) into gauges:
  `bullmq_jobs_waiting{queue}` and friends, the names
  Node's `Queue.exportPrometheusMetrics()` emits (`bullmq_job_count{queue,state}`,
  `bullmq_job_completed_total`, `bullmq_job_failed_total`), workers per queue, and timer
  health (`bullmq_delayed_overdue_seconds`). They count jobs of every runtime.
- `JobMetrics` is the worker's `JobObserver`: `bullmq_jobs_total{queue,status}`,
  `bullmq_jobs_duration_seconds{queue}` and `bullmq_expiry_lateness_seconds{queue}`,
  for the jobs *this process* ran. It runs per job on the hot path: no Redis calls,
  label children created once. It also counts `bullwait_whatsapp_ambiguous_total{kind,
  decision}`: sends that got no answer (bullwait.runtime.processors.notification).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import prometheus_client
from bullmq.job import Job
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bullwait.ops.snapshot import QueueSnapshot

# `_created` series double the output and no dashboard here uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client is unannotated

JOB_STATUSES = ("completed", "failed", "retried", "delayed", "stalled")

# Resolve the NestJS module's "<10 ms expiry checks" and WhatsApp round trips (~100 ms - seconds).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Lateness of a 15-minute timer: the NestJS module promises +-100 ms; le=0 counts early runs.
LATENESS_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def multiprocess_dir() -> str | None:
    """Set by the supervisor (`--processes N`): children write their counters there."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def serving_registry(process_registry: CollectorRegistry | None) -> CollectorRegistry | None:
    """What `/metrics` renders: this process's registry, or, under a supervisor, the
    counters and histograms of every worker process summed from PROMETHEUS_MULTIPROC_DIR
    (a restarted child's totals stay counted)."""
    path = multiprocess_dir()
    if path is None:
        return process_registry
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]  # unannotated
    return registry


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC collectors (like the default one)."""
    registry = CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


class JobMetrics:
    """`JobObserver` recording counters and histograms of the jobs this process runs."""

    def __init__(
        self,
        queues: Iterable[str] = (),
        expiry_queue: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.expiry_queue = expiry_queue
        # Registered before the metrics it feeds: collected first, so every scrape sees all jobs.
        self._pending = Pending()
        self.registry.register(self._pending)
        self.jobs = Counter(
            "bullmq_jobs",
            "Jobs this process finished, by status (completed, failed, retried, "
            "delayed = moved back to delayed e.g. by a rate limit, stalled = recovered by this process)",
            ["queue", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "bullmq_jobs_duration_seconds",
            "Processing time of the jobs this process ran",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "bullmq_expiry_lateness_seconds",
            "How late each check-expiry started after its expiresAt (first attempts only)",
            ["queue"],
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.ambiguous = Counter(
            "bullwait_whatsapp_ambiguous",
            "WhatsApp sends whose request left and got no answer (the message may have been delivered), "
            "by kind (timeout, connection) and what followed (retried: one more send; failed: the job failed)",
            ["kind", "decision"],
            registry=self.registry,
        )
        # Per queue: its duration histogram's observe and, per status, its counter's inc.
        self._hooks: dict[str, tuple[Callable[[float], None], dict[str, Callable[[float], None]]]] = {}
        self._lateness: Callable[[float], None] | None = None
        for queue in queues:
            self._children(queue)
        if expiry_queue:
            self._lateness = self._pending.observe(self.lateness.labels(expiry_queue))

    def _children(self, queue: str) -> tuple[Callable[[float], None], dict[str, Callable[[float], None]]]:
        """Create (once) and cache the label children of a queue."""
        counters = {status: self._pending.inc(self.jobs.labels(queue, status)) for status in JOB_STATUSES}
        hooks = self._hooks[queue] = (self._pending.observe(self.duration.labels(queue)), counters)
        return hooks

    # --- JobObserver ---

    def started(self, queue: str, job: Job, payload: Any) -> None:
        if queue != self.expiry_queue or self._lateness is None:
            return
        try:
            if job.attemptsMade:
                return  # a retry is late by its backoff, not by the timer
            # The text, not `payload.expires_at`: pydantic's time zones make `timestamp()` slower
            # than parsing the text again (the data is valid: the payload came from it).
            expires = job.data["expiresAt"]
            if type(expires) is str:
                self._lateness(time.time() - datetime.fromisoformat(expires).timestamp())
        except Exception:  # noqa: BLE001 - metrics never fail a job
            return

    def finished(self, queue: str, job: Job, status: str, seconds: float) -> None:
        try:
            observe, counters = self._hooks.get(queue) or self._children(queue)
            observe(seconds)
            inc = counters.get(status)
            if inc is None:
                inc = counters[status] = self._pending.inc(self.jobs.labels(queue, status))
            inc(1)
        except Exception:  # noqa: BLE001
            return

    def whatsapp_ambiguous(self, kind: str, decision: str) -> None:
        try:
            self.ambiguous.labels(kind, decision).inc()
        except Exception:  # noqa: BLE001
            return

    def stalled(self, queue: str, job_id: str) -> None:
        try:
            _, counters = self._hooks.get(queue) or self._children(queue)
            counters["stalled"](1)
        except Exception:  # noqa: BLE001
            return


class Pending(Collector):
    """What `JobMetrics` counted since the last scrape, added to prometheus-client's values
    when the registry is collected.

    `JobMetrics` runs for every job, and `observe()`/`inc()` cost a lock per value touched
    (a histogram takes two) plus checks and a linear bucket search. Here a job adds to plain
    lists (the bucket found by bisection); `collect()` (registered before the metrics, so
    run first on every scrape) adds them to the same values the public methods would, and
    a test compares the exposition with theirs. Jobs and scrapes both run on the event
    loop's thread. Under a supervisor (`PROMETHEUS_MULTIPROC_DIR`), another process reads
    this one's values from files at any time: there the values are incremented at once
    (still past the per-call checks). A prometheus-client without the attributes used
    here gets the public methods.
    """

    def __init__(self) -> None:
        self._flushes: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for flush in self._flushes:
            flush()
        return iter(())

    def observe(self, child: Any) -> Callable[[float], None]:
        """`child.observe` of a labelled histogram child."""
        try:
            bounds = tuple(child._upper_bounds)
            values = list(child._buckets)
            sum_value = child._sum
        except AttributeError:
            return child.observe  # type: ignore[no-any-return]
        if len(values) != len(bounds) or not bounds or bounds[-1] != float("inf"):
            return child.observe  # type: ignore[no-any-return]
        public = child.observe
        if getattr(sum_value, "_multiprocess", False):
            incs = [value.inc for value in values]
            add_sum = sum_value.inc

            def observe_now(amount: float) -> None:
                if amount != amount:  # NaN: no bucket takes it, as with the public method
                    public(amount)
                    return
                add_sum(amount)
                incs[bisect_left(bounds, amount)](1)  # the first bucket with amount <= its bound

            return observe_now
        counts = [0] * len(bounds)
        total = [0.0]

        def observe(amount: float) -> None:
            if amount != amount:
                public(amount)
                return
            total[0] += amount
            counts[bisect_left(bounds, amount)] += 1

        def flush() -> None:
            if total[0]:
                amount, total[0] = total[0], 0.0
                sum_value.inc(amount)
            for i, count in enumerate(counts):
                if count:
                    counts[i] -= count
                    values[i].inc(count)

        self._flushes.append(flush)
        return observe

    def inc(self, child: Any) -> Callable[[float], None]:
        """`child.inc` of a labelled counter child (amounts are never negative here)."""
        value: Any = getattr(child, "_value", None)
        if not callable(getattr(value, "inc", None)):
            return child.inc  # type: ignore[no-any-return]
        if getattr(value, "_multiprocess", False):
            return value.inc  # type: ignore[no-any-return]
        pending = [0.0]

        def inc(amount: float) -> None:
            pending[0] += amount

        def flush() -> None:
            if pending[0]:
                amount, pending[0] = pending[0], 0.0
                value.inc(amount)

        self._flushes.append(flush)
        return inc


class QueueCollector(Collector):
    """Yields the queue gauges of the snapshot taken for the current scrape.

    `collect()` is synchronous (prometheus-client's contract) and Redis is async, so the
    server reads the snapshot first (`set_snapshot`) and renders right after, in the
    same event-loop turn; no scrape ever sees another scrape's numbers half-updated.
    """

    def __init__(self) -> None:
        self._snapshots: list[QueueSnapshot] = []
        self._redis_up = False
        self._scrape_seconds = 0.0

    def set_snapshot(self, snapshots: list[QueueSnapshot] | None, seconds: float) -> None:
        self._snapshots = snapshots or []
        self._redis_up = snapshots is not None
        self._scrape_seconds = seconds

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its families depend on the snapshot

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("bullmq_redis_up", "1 if Redis answered this scrape", value=1 if self._redis_up else 0)
        yield GaugeMetricFamily(
            "bullmq_redis_scrape_seconds", "Time to read all queue counts from Redis", value=self._scrape_seconds
        )
        if not self._redis_up:
            return
        snaps = self._snapshots
        yield from (
            _gauge(
                "bullmq_jobs_waiting",
                "Jobs waiting for a worker (the wait list, as Node's getJobCounts counts `waiting`)",
                snaps,
                lambda s: s.waiting,
            ),
            _gauge("bullmq_jobs_active", "Jobs being processed", snaps, lambda s: s.active),
            _gauge("bullmq_jobs_delayed", "Delayed jobs (timers, backoffs, rate-limited)", snaps, lambda s: s.delayed),
            _gauge("bullmq_jobs_prioritized", "Waiting jobs with a priority", snaps, lambda s: s.prioritized),
            _gauge("bullmq_jobs_failed", "Jobs in the failed set", snaps, lambda s: s.failed),
            _gauge(
                "bullmq_jobs_completed",
                "Jobs in the completed set (bounded by retention)",
                snaps,
                lambda s: s.completed,
            ),
            _gauge("bullmq_queue_paused", "1 if the queue is paused", snaps, lambda s: 1 if s.paused else 0),
            _gauge(
                "bullmq_delayed_overdue_seconds",
                "Age of the most overdue delayed job (0 when none is due): timers not being promoted",
                snaps,
                lambda s: s.overdue_seconds(),
            ),
        )
        workers = GaugeMetricFamily(
            "bullmq_queue_workers", "Distinct workers connected (Node and Python)", labels=["queue"]
        )
        for snap in snaps:
            if snap.workers is not None:
                workers.add_metric([snap.name], snap.workers)
        yield workers
        # Node bullmq's `Queue.exportPrometheusMetrics()` names, help texts and labels.
        counts = GaugeMetricFamily(
            "bullmq_job_count", "Number of jobs in the queue by state", labels=["queue", "state"]
        )
        for snap in snaps:
            for state, count in snap.node_counts().items():
                counts.add_metric([snap.name, state], count)
        yield counts
        completed = CounterMetricFamily("bullmq_job_completed", "Total number of completed jobs", labels=["queue"])
        failed = CounterMetricFamily("bullmq_job_failed", "Total number of failed jobs", labels=["queue"])
        for snap in snaps:
            completed.add_metric([snap.name], snap.completed_total)
            failed.add_metric([snap.name], snap.failed_total)
        yield completed
        yield failed


def _gauge(name: str, documentation: str, snaps: list[QueueSnapshot], value: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for snap in snaps:
        family.add_metric([snap.name], value(snap))
    return family
