"""`bullwait serve`: the metrics and health server alone, for deployments whose workers are all Node."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import typer

from bullwait.cli.common import RedisUrl, fail, queue_keys, run_async, settings_from
from bullwait.engine.connection import describe_redis
from bullwait.logs import configure_logging, get_logger
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    queue: list[str] | None = typer.Option(
        None, "--queue", "-q", help="Queue to report (repeatable); default all three."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1, METRICS_HOST)."),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="Port to bind (default 9090, METRICS_PORT; 0 picks a free one)."
    ),
    redis_url: str | None = RedisUrl,
) -> None:
    """Serve /metrics, /health/queues and /health/live without running any worker.

    Example: bullwait serve --host 0.0.0.0 --port 9090
    """
    settings = settings_from(redis_url, metrics_host=host, metrics_port=port)
    configure_logging(settings.queue_log_level)
    if not settings.queue_monitoring_enabled:
        raise fail("monitoring is disabled (QUEUE_MONITORING_ENABLED=false); unset it to run `bullwait serve`", 2)
    keys = queue_keys(queue, settings)
    code = run_async(lambda: _serve(settings, keys))
    raise typer.Exit(code)


async def _serve(settings: Settings, keys: list[QueueKey]) -> int:
    from bullwait.monitoring.server import monitoring

    log = get_logger()
    log.info("serve starting", redis=describe_redis(settings), prefix=settings.bullmq_prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with monitoring(settings, [queue_name(k, settings) for k in keys], log=log):
        await stop.wait()
        log.info("stopped")
    return 0
