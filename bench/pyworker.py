"""Python worker processes of the benchmark (started by `python -m bench`, one per run).

    python -m bench.pyworker '<json options>'

options: kind "bullwait" (BullwaitWorker through bullwait.runtime.runner + runtime.dispatch, a
registered processor, payload validation, structlog at info, the Prometheus JobMetrics observer
as `bullwait worker` has it), "bare" (BullwaitWorker with
a bare processor: bullwait's worker without its processing layer) or "stock" (a plain
bullmq-py Worker and the same bare processor); mode "timers" | "throughput" | "notify";
redisUrl, prefix, concurrency, out; processor "noop" (timers: check-expiry does nothing, as
Node's bench processor); processes (bullwait only: N children under
bullwait.runtime.supervisor); notify (the real send-slot-available processor and WhatsApp sender
against bullwait/dev/fake_whatsapp.py): fakeUrl, perSecond, marginMs, salonLimit, salonWindowMs.
Prints "ready", runs until SIGTERM, then writes `out` (JSON).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from bullmq import Worker

from bullwait.engine.connection import keep_cancellations, redis_options
from bullwait.logs import configure_logging
from bullwait.monitoring.metrics import JobMetrics
from bullwait.runtime.dispatch import Context, Registry
from bullwait.runtime.processors import builtin_registry
from bullwait.runtime.runner import run_until_done, run_workers
from bullwait.runtime.services import build_services
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.waitlist.payloads import ExpiryJob


class Recorder:
    """JobObserver: lateness at processor start (timers) and processor seconds, passed on
    to `metrics` (bullwait's own observer, so the bench pays for it as a worker does)."""

    def __init__(self, timers: bool, metrics: JobMetrics) -> None:
        self.timers = timers
        self.metrics = metrics
        self.lateness: list[float] = []
        self.proc_ms: list[float] = []
        self.processed = 0

    def started(self, queue: str, job: Any, payload: Any) -> None:
        self.metrics.started(queue, job, payload)
        self.processed += 1
        if self.timers:
            self.lateness.append(time.time() * 1000 - (job.timestamp + int(job.opts.get("delay") or 0)))

    def finished(self, queue: str, job: Any, status: str, seconds: float) -> None:
        self.metrics.finished(queue, job, status, seconds)
        if self.timers:
            self.proc_ms.append(seconds * 1000)

    def stalled(self, queue: str, job_id: str) -> None:
        self.metrics.stalled(queue, job_id)


async def noop(payload: ExpiryJob, ctx: Context) -> None:
    return None


def _registry(o: dict[str, Any]) -> tuple[Registry, QueueKey]:
    if o["mode"] == "timers" and o.get("processor") != "noop":
        return builtin_registry(), QueueKey.WAITLIST_EXPIRY
    if o["mode"] in ("throughput", "timers"):
        registry = Registry()
        registry.register(QueueKey.WAITLIST_EXPIRY, "check-expiry", ExpiryJob, noop)
        return registry, QueueKey.WAITLIST_EXPIRY
    return builtin_registry(), QueueKey.WAITLIST_NOTIFICATION


def _settings(o: dict[str, Any]) -> Settings:
    notify: dict[str, Any] = {}
    if o["mode"] == "notify":
        # The real sender (bullwait.waitlist.whatsapp.CloudApiSender) against bullwait/dev/fake_whatsapp.py.
        notify = {
            "whatsapp_api_base_url": o["fakeUrl"],
            "whatsapp_access_token": "bench-token",
            "whatsapp_phone_number_id": "1234567890",
            "whatsapp_max_messages_per_second": o.get("perSecond", 80),
            # salonLimit 0: only the global limit applies (the salon window is still checked).
            "waitlist_notification_rate_limit": o.get("salonLimit") or 1_000_000,
            "waitlist_notification_rate_window_ms": o.get("salonWindowMs") or 60_000,
        }
        if o.get("marginMs") is not None:
            notify["whatsapp_rate_window_margin_ms"] = o["marginMs"]
    return Settings(
        redis_url=o["redisUrl"],
        bullmq_prefix=o["prefix"],
        waitlist_expiry_concurrency=o["concurrency"],
        waitlist_notification_concurrency=o["concurrency"],
        queue_log_level=o.get("logLevel", "info"),
        queue_monitoring_enabled=False,
        **notify,
    )


def _dump_tasks() -> None:
    """SIGUSR2: every asyncio task's stack to stderr (the bench asks a stuck worker for it)."""
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def run_bullwait(o: dict[str, Any]) -> dict[str, Any]:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    settings = _settings(o)
    configure_logging(settings.queue_log_level, json=True, stream=open(os.devnull, "w"))
    registry, key = _registry(o)
    metrics = JobMetrics([queue_name(k, settings) for k in QueueKey], queue_name(QueueKey.WAITLIST_EXPIRY, settings))
    recorder = Recorder(o["mode"] == "timers", metrics)
    stop = asyncio.Event()
    # check-expiry and send-slot-available work on the waitlist store (ctx.services).
    services = await build_services(settings, registry) if o["mode"] in ("timers", "notify") else None
    asyncio.get_running_loop().call_later(0.5, lambda: print("ready", flush=True))
    try:
        await run_workers(settings, registry, [key], 10, services=services, observer=recorder, stop=stop)
    finally:
        if services is not None:
            await services.close()
    return {"processed": recorder.processed, "lateness": recorder.lateness, "procMs": recorder.proc_ms}


async def run_stock(o: dict[str, Any]) -> dict[str, Any]:
    """A bare processor on bullmq-py's Worker ("stock") or on BullwaitWorker ("bare")."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    settings = _settings(o)
    lateness: list[float] = []
    count = [0]

    async def process(job: Any, token: str) -> None:
        count[0] += 1
        if o["mode"] == "timers":
            lateness.append(time.time() * 1000 - (job.timestamp + int(job.opts.get("delay") or 0)))
        return None

    from bullwait.engine.worker import BullwaitWorker

    worker_class = BullwaitWorker if o["kind"] == "bare" else Worker
    worker = worker_class(
        queue_name(QueueKey.WAITLIST_EXPIRY, settings),
        process,
        {
            "connection": redis_options(settings),
            "prefix": o["prefix"],
            "concurrency": o["concurrency"],
            "autorun": False,
        },
    )
    # Stopping only: without it, a SIGTERM that lands as the stock worker's BZPOPMIN leaves is
    # lost (Python 3.11's wait_for inside redis-py), and the stock worker's 5 s read timeout on
    # its 5 s block makes it re-send that BZPOPMIN for minutes (bullwait.engine.worker, 8.).
    keep_cancellations(worker.backend.blocking_connection)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.ensure_future(worker.run())
    await worker.backend.connection.conn.ping()
    print("ready", flush=True)
    await stop.wait()
    await worker.close()
    await asyncio.gather(task, return_exceptions=True)
    return {"processed": count[0], "lateness": lateness}


def main() -> int:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the bench's stop() asks for stacks of a stuck worker
    o = json.loads(sys.argv[1])
    if int(o.get("processes", 1)) > 1:
        from bullwait.runtime.supervisor import Supervisor

        child = dict(o, processes=1, out=None)
        argv = [sys.executable, "-m", "bench.pyworker", json.dumps(child)]
        configure_logging("warning", json=True, stream=open(os.devnull, "w"))
        return Supervisor(argv, int(o["processes"]), shutdown_timeout=10).run()
    if o.get("uvloop"):
        import uvloop  # optional, measured only when installed

        uvloop.install()
    runner = run_bullwait if o["kind"] == "bullwait" else run_stock
    result = run_until_done(runner(o))
    if o.get("out"):
        with open(o["out"], "w") as fh:
            json.dump(dict(result, runtime=o["kind"]), fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
