"""The worker process: one BullwaitWorker per queue in one asyncio loop, graceful shutdown.

SIGTERM/SIGINT stop fetching, let active jobs finish within `shutdown_timeout`, then
close; jobs still running after that are left to BullMQ's stalled-job recovery (their
locks expire and another worker takes them). A job that stalls more often than
BULLWAIT_MAX_STALLED_COUNT is failed, and a notification cut off mid-request is failed
as "outcome unknown" rather than risk a second message.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bullwait.engine.connection import bound_retries, bullmq_connection, wait_for_redis
from bullwait.engine.internals import bullmq_connections
from bullwait.engine.worker import BullwaitWorker, default_worker_name
from bullwait.logs import flush_logs, get_logger
from bullwait.monitoring.health import LoopWatch
from bullwait.runtime.dispatch import JobObserver, QueueDispatch, Registry
from bullwait.settings import Settings
from bullwait.waitlist.catalog import SPECS, QueueKey, concurrency, queue_name


def worker_options(key: QueueKey, settings: Settings, worker_name: str) -> dict[str, Any]:
    """bullmq Worker options from the catalog and settings."""
    spec = SPECS[key]
    defaults = spec.default_job_options()
    options: dict[str, Any] = {
        "connection": bullmq_connection(settings),
        "prefix": settings.bullmq_prefix,
        "concurrency": concurrency(key, settings),
        "name": worker_name,
        "autorun": False,
        # Fallback retention for jobs whose producer wrote none (bullmq honours these).
        "removeOnComplete": defaults["removeOnComplete"],
        "removeOnFail": defaults["removeOnFail"],
        # Stalled-job recovery: a dead worker's jobs come back after their lock expires.
        "lockDuration": settings.bullwait_lock_duration_ms,
        "stalledInterval": settings.bullwait_stalled_interval_ms,
        "maxStalledCount": settings.bullwait_max_stalled_count,
        # After Redis comes back, poll again within a second (bullmq-py waits 15 s).
        "runRetryDelay": 1000,
    }
    if settings.sentinel is not None or settings.cluster is not None:
        # A client of its own for the BZPOPMIN: on a cluster its connection is to the master of
        # the queue's slot, and follows MOVED after a failover without touching the main client's.
        options["blockingConnection"] = bullmq_connection(settings)
    if settings.bullmq_metrics_max_data_points:
        # BullMQ's own per-minute metrics (`<prefix>:<queue>:metrics:completed|failed`), which
        # Node's getMetrics()/exportPrometheusMetrics() and Bull Board read. bullmq-py 3.4.4
        # passes it on as `maxMetricsSize` in moveToFinished's packed options.
        options["metrics"] = {"maxDataPoints": settings.bullmq_metrics_max_data_points}
    # No BullMQ `limiter` on the notification queue: it counts job *starts* in fixed 1 s
    # windows (a sliding second saw up to ~2x its max), and starts that send nothing
    # (stale offers, salon-limited jobs) would use it up. The Cloud API's throughput is
    # a sliding window counted at the moment of sending (bullwait.waitlist.ratelimit).
    return options


class ErrorThrottle:
    """One `worker error` line per queue and message every `every` seconds.

    bullmq retries a failing fetch about ten times a second: Redis out of memory or an
    ACL that denies a command would otherwise flood the log. Repeats are counted and
    reported with the next line of the same error (`repeated`).
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def log(self, log: Any, queue: str, err: BaseException) -> None:
        message = str(err) or type(err).__name__
        key = (queue, message)
        now = time.monotonic()
        last, repeated = self._last.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._last[key] = (last, repeated + 1)
            return
        if len(self._last) >= 1000:  # messages can carry job ids: keep the table bounded
            self._last.clear()
        self._last[key] = (now, 0)
        fields: dict[str, Any] = {"queue": queue, "error": message}
        if repeated:
            fields["repeated"] = repeated
        if "command not allowed when used memory" in message:
            fields["hint"] = "Redis is out of memory (maxmemory, noeviction): free memory or raise maxmemory"
        log.warning("worker error", **fields)


@dataclass
class WorkerPool:
    """The running workers of one process."""

    settings: Settings
    registry: Registry
    queues: list[QueueKey]
    services: Any = None
    observer: JobObserver | None = None
    worker_name: str = field(default_factory=default_worker_name)
    # Extra bullmq Worker options per queue (e.g. `limiter`), merged over `worker_options`.
    options: dict[QueueKey, dict[str, Any]] = field(default_factory=dict)
    workers: dict[QueueKey, BullwaitWorker] = field(default_factory=dict)
    log: Any = field(default_factory=get_logger)
    _errors: ErrorThrottle = field(default_factory=lambda: ErrorThrottle())

    def start(self) -> list[asyncio.Task[None]]:
        tasks = []
        for key in self.queues:
            name = queue_name(key, self.settings)
            opts = {**worker_options(key, self.settings, self.worker_name), **self.options.get(key, {})}
            worker = BullwaitWorker(name, self._processor(key, name), opts)
            bound_retries(self.settings, *bullmq_connections(worker))
            worker.on("error", lambda err, *_a, q=name: self._errors.log(self.log, q, err))
            worker.on("stalled", lambda job_id, *_a, q=name: self._stalled(q, job_id))
            worker.on("poison", lambda job_id, reason, *_a, q=name: self._poison(q, job_id, reason))
            worker.on(
                "orphans",
                lambda ids, *_a, q=name: self.log.warning(
                    "jobs fetched without a reply given back to the queue", queue=q, jobIds=ids[:20], count=len(ids)
                ),
            )
            self.workers[key] = worker
            tasks.append(asyncio.ensure_future(worker.run()))
            self.log.info("worker started", queue=name, concurrency=worker.opts["concurrency"], worker=self.worker_name)
        return tasks

    def _poison(self, queue: str, job_id: str, reason: str) -> None:
        """A job failed for its own hash or options, with no processor to log it (worker.py, 5.)."""
        self.log.error("job failed", queue=queue, jobId=job_id, error=reason)

    def _stalled(self, queue: str, job_id: str) -> None:
        self.log.warning("job stalled", queue=queue, jobId=job_id)
        if self.observer is not None:
            self.observer.stalled(queue, job_id)

    def _processor(self, key: QueueKey, name: str) -> Any:
        """The bullmq processor of queue `key` (a bound method: bullmq reads its parameters)."""
        return QueueDispatch(self.registry, key, name, self.settings, self.log, self.services, self.observer).run

    async def close(self, timeout: float) -> bool:
        """Stop fetching, wait up to `timeout` s for active jobs; True if all finished."""
        graceful = [asyncio.ensure_future(w.close()) for w in self.workers.values()]
        if not graceful:
            return True
        _done, pending = await asyncio.wait(graceful, timeout=timeout)
        if pending:
            self.log.warning("shutdown timeout reached, leaving active jobs to stalled recovery", timeout=timeout)
            for worker in self.workers.values():
                worker.abort()
            await asyncio.wait([asyncio.ensure_future(w.close(force=True)) for w in self.workers.values()], timeout=5)
            for task in pending:
                task.cancel()
            return False
        return True


T = TypeVar("T")
LOOP_EXIT_TIMEOUT = 5.0


def run_until_done(main: Awaitable[T], cleanup_timeout: float = LOOP_EXIT_TIMEOUT) -> T:
    """`asyncio.run(main)`, except that tasks still running when `main` returns get
    `cleanup_timeout` s to finish after being cancelled. asyncio.run waits for them
    forever, and bullmq's `Worker.close` ignores cancellation while its teardown waits
    for the worker's jobs: a process asked to stop must stop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=cleanup_timeout))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            # Log lines of the loop's last turn wait for a flush that a closed loop never runs
            # (the clean-up turns above run it, unless one was cut short: a second Ctrl-C).
            # They go out now, before whatever the caller prints (an error, a traceback).
            flush_logs()
            loop.close()


async def run_workers(
    settings: Settings,
    registry: Registry,
    queues: Iterable[QueueKey] | None = None,
    shutdown_timeout: float | None = None,
    services: Any = None,
    observer: JobObserver | None = None,
    stop: asyncio.Event | None = None,
    options: dict[QueueKey, dict[str, Any]] | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
    loops: LoopWatch | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set). Returns the process exit code.

    `before_start` runs once Redis answers, before any worker touches a queue key. `loops`
    (the monitoring server's) learns each worker, so /health/live sees a loop that keeps failing."""
    log = get_logger()
    stop_event = stop or asyncio.Event()
    _install_signal_handlers(stop_event, log)
    if not await _until_stopped(wait_for_redis(settings, log), stop_event):
        log.info("stopped before Redis answered")
        return 0
    if before_start is not None:
        await before_start()
    pool = WorkerPool(
        settings, registry, list(queues or list(QueueKey)), services, observer, log=log, options=options or {}
    )
    if settings.bullwait_worker_name:
        pool.worker_name = settings.bullwait_worker_name  # shown in Bull Board's Workers tab
    tasks = pool.start()
    if loops is not None:
        for key, worker in pool.workers.items():
            loops.add(queue_name(key, settings), worker)
    stopper = asyncio.ensure_future(stop_event.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    # A worker loop that ended while nobody asked to stop is a crash, not a shutdown:
    # say why and exit non-zero so a supervisor (ours, systemd, Kubernetes) restarts us.
    crashed = [t for t in tasks if t.done()] if not stop_event.is_set() else []
    for task in crashed:
        error = task.exception() if not task.cancelled() else None
        log.error("worker loop ended unexpectedly, stopping", error=repr(error) if error else "ended without error")
    stopper.cancel()
    timeout = settings.bullwait_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
    log.info("shutting down", timeout=f"{timeout}s")
    clean = await pool.close(timeout)
    for task in tasks:
        if not task.done():
            task.cancel()
    # bullmq's own close swallows cancellation while its teardown runs: never wait forever
    # for a worker loop, so SIGTERM always ends the process.
    _, stuck = await asyncio.wait(tasks, timeout=LOOP_EXIT_TIMEOUT) if tasks else (set(), set())
    if stuck:
        log.warning("worker loop did not stop; exiting anyway", loops=len(stuck), waited=f"{LOOP_EXIT_TIMEOUT}s")
    log.info("stopped", graceful=clean and not stuck)
    return 1 if crashed else 0


async def _until_stopped(work: Any, stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first; True if it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def _install_signal_handlers(stop: asyncio.Event, log: Any) -> None:
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        first = not stop.is_set()
        stop.set()  # before logging: nothing may keep a signal from stopping the process
        if first:
            log.info("signal received, stopping", signal=signame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, request_stop, sig.name)
