"""`bullwait`: run workers, the demo, and the operator commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import typer

from bullwait.cli.common import AsJson, RedisUrl, fail, queue_keys, run_async, settings_from
from bullwait.cli.render import print_table, stdout_console
from bullwait.engine.connection import describe_redis, redis_hostname
from bullwait.errors import BullwaitError
from bullwait.logs import configure_logging, get_logger
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, catalog_json, queue_name

app = typer.Typer(
    name="bullwait",
    help="Python workers and operations tooling for the BullMQ waitlist queues shared with NestJS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def worker(
    queue: list[str] | None = typer.Option(
        None, "--queue", "-q", help="Queue to serve (repeatable); default all three."
    ),
    shutdown_timeout: float | None = typer.Option(
        None,
        "--shutdown-timeout",
        min=0,
        help="Seconds active jobs get to finish on SIGTERM (default 30, BULLWAIT_SHUTDOWN_TIMEOUT).",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        "-p",
        min=1,
        max=64,
        help="Worker processes under one supervisor (one per core that Redis does not need); SIGTERM drains them all.",
    ),
    redis_url: str | None = RedisUrl,
) -> None:
    """Run the waitlist workers until SIGTERM/SIGINT.

    Example: bullwait worker --queue waitlist-expiry --shutdown-timeout 20 --processes 2
    """
    settings = settings_from(redis_url)
    configure_logging(settings.queue_log_level)
    keys = queue_keys(queue, settings)
    _check_plugins(settings)
    # The first line says where this worker reads jobs from: a wrong db or prefix shows here.
    get_logger().info(
        "worker starting",
        redis=describe_redis(settings),
        prefix=settings.bullmq_prefix,
        queues=[queue_name(k, settings) for k in keys],
        processes=processes,
    )
    if processes > 1:
        raise typer.Exit(_supervise(settings, queue, shutdown_timeout, processes, redis_url))
    code = run_async(lambda: _worker(settings, keys, shutdown_timeout))
    raise typer.Exit(code)


def _check_plugins(settings: Settings) -> None:
    """A bad BULLWAIT_PROCESSORS stops the worker in one line, before it logs anything."""
    from bullwait.runtime.plugins import load_registry

    try:
        load_registry(settings)
    except BullwaitError as exc:
        raise fail(str(exc), exc.exit_code) from None


def _supervise(
    settings: Settings, queue: list[str] | None, shutdown_timeout: float | None, processes: int, redis_url: str | None
) -> int:
    from bullwait.runtime.supervisor import Supervisor, core_contention

    warning = core_contention(processes, redis_hostname(settings), os.cpu_count())
    if warning:
        get_logger().warning("worker processes contend with Redis for CPUs", advice=warning)
    argv = [sys.executable, "-m", "bullwait.cli.main", "worker"]
    for name in queue or []:
        argv += ["--queue", name]
    if shutdown_timeout is not None:
        argv += ["--shutdown-timeout", str(shutdown_timeout)]
    # The URL may carry a password: children get it in their environment, never in argv
    # (which any local user can read with `ps`).
    env = dict(os.environ, REDIS_URL=redis_url) if redis_url else None
    timeout = settings.bullwait_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
    return Supervisor(argv, processes, env=env, shutdown_timeout=timeout).run()


async def _worker(settings: Settings, keys: list[QueueKey], shutdown_timeout: float | None) -> int:
    from bullwait.monitoring.health import LoopWatch
    from bullwait.monitoring.metrics import serving_registry
    from bullwait.monitoring.processes import Peers, report_loops
    from bullwait.monitoring.server import monitoring
    from bullwait.ops.presence import warn_if_wrong_db
    from bullwait.runtime.runner import run_workers
    from bullwait.runtime.services import build_services

    services = await build_services(settings)
    try:
        # /metrics and /health/* for the queues this process serves (QUEUE_MONITORING_ENABLED).
        # Under a supervisor (--processes N) only the first child serves them, for all children.
        names = [queue_name(k, settings) for k in keys]
        serves = os.environ.get("BULLWAIT_PROCESS_INDEX", "0") == "0"
        registry = serving_registry(getattr(services.observer, "registry", None))
        # /health/live answers 503 while a worker loop keeps failing: under a supervisor, a
        # loop of any of its processes (each reports its own; the serving one reads them all).
        peers = Peers.from_env()
        loops = LoopWatch(peers if serves else None)
        reporter = asyncio.ensure_future(report_loops(loops, peers.directory, peers.own_index)) if peers else None
        server = monitoring(settings, names, registry, loops=loops) if serves else contextlib.nullcontext()
        try:
            async with server:
                return await run_workers(
                    settings,
                    services.registry,
                    keys,
                    shutdown_timeout,
                    services=services,
                    observer=services.observer,
                    before_start=(lambda: warn_if_wrong_db(settings, get_logger())) if serves else None,
                    loops=loops,
                )
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
    finally:
        await services.close()


@app.command()
def demo(
    customers: int = typer.Option(
        5, "--customers", min=3, max=10_000, help="Customers joining the demo waitlist (at least 3)."
    ),
    timer_ms: int = typer.Option(
        2000,
        "--timer-ms",
        min=100,
        max=60_000,
        help="Offer time (expiry timer) for the demo, in ms (the real one is 15 min).",
    ),
    timeout: float = typer.Option(60, "--timeout", min=1, help="Seconds to wait for the demo jobs."),
    embedded: str = typer.Option(
        "auto",
        "--embedded-redis",
        help="auto: start a private redis-server when none is configured or answering; always; never.",
    ),
    redis_url: str | None = RedisUrl,
) -> None:
    """Run the workers plus a short burst of waitlist traffic and show it processed.

    Example: bullwait demo --customers 10
    """
    settings = settings_from(redis_url)
    configure_logging(settings.queue_log_level)
    if embedded not in ("auto", "always", "never"):
        raise fail(f"--embedded-redis must be auto, always or never (got {embedded!r})", 2)
    from bullwait.dev.embedded import RedisServer, local_redis_answers

    server = None
    if embedded == "always" or (
        embedded == "auto"
        and not settings.redis_configured
        and not local_redis_answers(settings.redis_host, settings.redis_port)
    ):
        data_dir = Path(os.environ.get("BULLWAIT_EMBEDDED_DIR", ".bullwait/redis"))
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = RedisServer(data_dir=str(data_dir.resolve())).start()
        except BullwaitError as exc:
            raise fail(str(exc)) from None
        settings = settings.with_overrides(redis_url=f"{server.url}/{settings.redis_queue_db}")
        typer.echo(f"started embedded redis-server on {server.url} (data in {data_dir}, AOF on)", err=True)
    try:
        report = run_async(lambda: _demo(settings, customers, timer_ms, timeout))
    finally:
        if server is not None:
            server.stop()
    _print_demo_report(report)
    if not report.flow_ok:
        raise fail(
            f"the expired offer did not pass to the next customer within {timeout:g} s; "
            "see the log above (on a slow machine, try a longer --timer-ms)"
        )
    if not report.ok:
        raise fail("not every demo job completed; see the log above and `bullwait stats`")


def _print_demo_report(report) -> None:  # type: ignore[no-untyped-def]
    """The demo's tables. A reader that left early (`bullwait demo | head -2`) has what it
    wanted: the rest goes to /dev/null and the demo's verdict still sets the exit code."""
    from bullwait.dev.demo import report_rows

    console = stdout_console()
    try:
        print_table(report_rows(report), title=f"demo {report.run_id}: {report.seconds:.1f}s", console=console)
        print_table(report.entries, title="waitlist entries", console=console)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except SystemExit:
        if not console.quiet:  # rich exits at once on a closed stdout, after setting `quiet` and muting it
            raise


async def _demo(settings: Settings, customers: int, timer_ms: int, timeout: float):  # type: ignore[no-untyped-def]
    from bullwait.dev.demo import fake_whatsapp_settings, run_demo
    from bullwait.dev.fake_whatsapp import FakeWhatsApp
    from bullwait.runtime.runner import run_workers
    from bullwait.runtime.services import build_services

    with FakeWhatsApp() as api:
        settings = fake_whatsapp_settings(settings.with_overrides(waitlist_offer_minutes=timer_ms / 60_000), api)
        services = await build_services(settings)
        assert services.waitlist is not None, "build_services builds the Waitlist on bullwait's own store"
        stop = asyncio.Event()
        workers = asyncio.ensure_future(
            run_workers(settings, services.registry, services=services, observer=services.observer, stop=stop)
        )
        try:
            return await run_demo(services.waitlist, customers, timeout)
        finally:
            stop.set()
            await workers
            await services.close()
            # A log line, not an echo: `bullwait demo 2>&1 | head -2` may have closed stderr.
            get_logger().info(
                "demo offers went to the fake WhatsApp Cloud API, none to WhatsApp",
                url=api.base_url,
                received=len(api.sent()),
            )


@app.command()
def catalog(
    as_json: bool = AsJson,
) -> None:
    """Print the queue catalog: names, job names, concurrency and default job options.

    Example: bullwait catalog --json > node-compat/catalog.json
    """
    settings = settings_from(None)
    if as_json:
        sys.stdout.write(catalog_json())
        return
    from bullwait.waitlist.catalog import SPECS, concurrency, queue_name

    rows = []
    for key, spec in SPECS.items():
        opts = spec.default_job_options()
        rows.append(
            {
                "queue": queue_name(key, settings),
                "job": spec.job_name,
                "concurrency": concurrency(key, settings),
                "attempts": spec.attempts,
                "backoff": f"exponential {spec.backoff_delay_ms}ms",
                "keep completed": f"{spec.keep_completed[0]} / {spec.keep_completed[1]}s",
                "keep failed": f"{spec.keep_failed[0]} / {spec.keep_failed[1]}s",
                "priority": spec.priority.value + (f" ({opts['priority']})" if "priority" in opts else " (none)"),
            }
        )
    print_table(rows)


# Operator commands live in their own modules (cmd_*.py); each adds itself to `app`.
from bullwait.cli import cmd_domain, cmd_migrate, cmd_monitoring, cmd_ops  # noqa: E402

for _module in (cmd_domain, cmd_monitoring, cmd_ops, cmd_migrate):
    _module.register(app)


def run() -> None:
    """Run the CLI; a usage error (bad option value, missing argument) is one line, exit 2."""
    try:
        code = app(standalone_mode=False, prog_name="bullwait")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's UsageError/Abort, from whichever click typer uses
        if exc.__class__.__name__ == "Abort":
            sys.exit(130)
        if not hasattr(exc, "format_message"):
            raise
        message = " ".join(str(exc.format_message()).split())
        if not message:  # e.g. a group called without a command: its help was printed
            sys.exit(int(getattr(exc, "exit_code", 2) or 2))
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"bullwait: error: {message}{hint}", file=sys.stderr)
        sys.exit(int(getattr(exc, "exit_code", 2) or 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
