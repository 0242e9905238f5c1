"""Operator commands: stats, cancel, clean, retry, promote, pause, resume, jobs, doctor.

A thin shell over `bullwait.ops` (queues, doctor): parse and check arguments (before touching
Redis), with messages that name the flags, call the library, print (bullwait.cli.render) or `--json`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from rich.live import Live
from rich.table import Table

from bullwait.cli.common import (
    AsJson,
    RedisUrl,
    context_line,
    err_console,
    fail,
    print_json,
    queue_key,
    queue_keys,
    run_async,
    settings_from,
)
from bullwait.cli.render import (
    cancel_message,
    doctor_lines,
    job_row,
    print_job,
    print_table,
    stats_table,
    stdout_console,
)
from bullwait.engine.connection import cluster_redirect, read_cluster
from bullwait.engine.internals import is_cluster
from bullwait.errors import BadArgument, BullwaitError, JobNotFound, RedisUnavailable
from bullwait.logs import first_line
from bullwait.ops.checks import CLEAN_STATES, JOB_STATES, check_count, normalize_state
from bullwait.ops.doctor import run_doctor
from bullwait.ops.durations import parse_duration_ms
from bullwait.ops.presence import queue_presence
from bullwait.ops.queues import Ops
from bullwait.ops.results import CleanResult
from bullwait.ops.snapshot import QueueSnapshot
from bullwait.settings import Settings
from bullwait.waitlist.jobids import BadJobId, check_job_id

T = TypeVar("T")

# `retry`/`promote` moving more jobs than this ask first (--yes); fewer are routine.
CONFIRM_ABOVE = 100


QueueOpt = typer.Option(None, "--queue", "-q", help="Queue name (repeatable); default: every queue of the catalog.")

jobs_app = typer.Typer(
    name="jobs",
    help="List and inspect jobs.\n\nExample: bullwait jobs list waitlist-expiry --status failed --limit 5",
    no_args_is_help=True,
)


def _checked(make: Callable[[], T]) -> T:
    """Run an argument check; a bad argument is one line and exit code 2."""
    try:
        return make()
    except BullwaitError as exc:
        raise fail(str(exc), exc.exit_code) from None


def _job_id(job_id: str, queue: str = "QUEUE", what: str = "job id", own_keys: bool = True) -> str:
    """The job id argument checked, with advice naming the command that finds the right one."""
    try:
        return check_job_id(job_id, what, own_keys)
    except BadJobId as exc:
        hints = {
            "empty": "pass the id as shown by `bullwait jobs list`",
            "queue-key": f"find job ids with `bullwait jobs list {queue} --status <state>`",
            "job-key": f"show that job with `bullwait jobs show {queue} {exc.owner}`",
        }
        raise fail(f"{exc.problem}; {hints[exc.kind]}" if exc.kind in hints else str(exc), exc.exit_code) from None


def _with_ops(settings: Settings, action: Callable[[Ops], Awaitable[T]], human: bool = False) -> T:
    """Run `action` on an open Ops; `human` output first says which Redis, db and prefix
    it reads, and warns when that db holds none of the catalog's queues."""

    async def go() -> T:
        async with await Ops.open(settings) as ops:
            try:
                if human:
                    await _orient(ops)
                return await action(ops)
            except ResponseError as exc:
                redirect = cluster_redirect(ops.settings, exc)
                if redirect is not None:
                    raise redirect from None
                raise RedisRefused(f"Redis refused a command: {first_line(exc)}") from None
            except (RedisError, RedisClusterException, OSError) as exc:
                raise RedisUnavailable(f"Redis stopped answering ({first_line(exc)}); check it and try again") from None

    return run_async(go)


async def _orient(ops: Ops) -> None:
    stdout_console().print(context_line(ops.settings), markup=False, highlight=False)
    warning = (await queue_presence(ops.client, ops.settings)).warning()
    if warning:
        print(f"bullwait: warning: {warning}", file=sys.stderr, flush=True)


class RedisRefused(BullwaitError):
    """Redis answered with an error (ACL NOPERM, OOM, read-only replica...)."""


# --- stats ---------------------------------------------------------------------------


async def _topology_line(ops: Ops, as_json: bool = False) -> str | None:
    """The Sentinel or cluster topology in one line (None on one node, or for --json, whose shape stays)."""
    if as_json:
        return None
    if is_cluster(ops.client):
        return (await read_cluster(ops.client)).summary()
    topology = await ops.topology()
    return topology.summary() if topology is not None else None


def stats(
    queue: list[str] | None = QueueOpt,
    watch: float | None = typer.Option(None, "--watch", "-w", help="Refresh every SECONDS until Ctrl-C."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Per queue: waiting, prioritized, delayed, active, completed, failed, paused, workers, oldest waiting.

    Counts equal Node bullmq's getJobCounts; workers counts Node and Python workers. With Redis Sentinel
    a line under the table shows the master, the replicas and their lag, and the sentinels answering
    (with a cluster, its nodes); --watch reads that line once, and again after a failed refresh.

    --json prints a list of objects (name, waiting, active, completed, failed, delayed, prioritized, paused,
    workers, ...); with --watch, one JSON line per refresh.

    Example: bullwait stats --queue waitlist-expiry --watch 2
    """
    settings = settings_from(redis_url)
    keys = queue_keys(queue, settings)
    if watch is not None and not 0.1 <= watch <= 86_400:
        raise fail(f"--watch must be between 0.1 and 86400 seconds (got {watch})", 2)

    console = stdout_console()

    async def once(ops: Ops) -> tuple[list[QueueSnapshot], str | None]:
        return await ops.stats(keys), await _topology_line(ops, as_json)

    if watch is None:
        rows, topology = _with_ops(settings, once, human=not as_json)
        if as_json:
            print_json([r.to_json() for r in rows])
        else:
            console.print(stats_table(rows, console, topology))
        return

    async def loop(ops: Ops) -> None:
        if as_json:
            while True:
                rows = await ops.stats(keys)
                sys.stdout.write(json.dumps([r.to_json() for r in rows]) + "\n")
                sys.stdout.flush()
                await asyncio.sleep(watch)
        # The topology changes only with a failover or a reshard, which the stats read notices.
        topology = await _topology_line(ops)

        async def table_now() -> Table:
            nonlocal topology
            try:
                rows = await ops.stats(keys)
            except (RedisError, RedisClusterException, OSError):
                topology = await _topology_line(ops)  # where things stand now (or the error again)
                rows = await ops.stats(keys)
            return stats_table(rows, console, topology)

        if not console.is_terminal:  # piped: a new table per refresh
            while True:
                console.print(await table_now())
                sys.stdout.flush()
                await asyncio.sleep(watch)
        with Live(await table_now(), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(watch)
                live.update(await table_now(), refresh=True)

    _with_ops(settings, loop, human=not as_json)


# --- cancel --------------------------------------------------------------------------


def cancel(
    waitlist_id: str | None = typer.Argument(None, help="Waitlist id whose expiry timer (job expiry_<id>) to cancel."),
    queue: str | None = typer.Option(None, "--queue", "-q", help="With --job: the job's queue."),
    job: str | None = typer.Option(None, "--job", "-j", help="Cancel this job id instead (needs --queue)."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Cancel a waiting or delayed job: a waitlist expiry timer, or any job with --queue/--job.

    Exit 0 when removed; 1 when it is active/completed/failed (says which) or does not exist.

    Example: bullwait cancel w-42   |   bullwait cancel --queue waitlist-notification --job 17
    """
    settings = settings_from(redis_url)
    if (waitlist_id is None) == (job is None):
        raise fail("give either a WAITLIST_ID or --queue Q --job JOB_ID", 2)
    if job is not None:
        if queue is None:
            raise fail("--job needs --queue (the job's queue)", 2)
        key = queue_key(queue, settings)
        job_id = _job_id(job, queue)
        result = _with_ops(settings, lambda ops: ops.cancel(key, job_id), human=not as_json)
        message = cancel_message(result)
    else:
        assert waitlist_id is not None
        if queue is not None:
            raise fail("--queue goes with --job; a WAITLIST_ID always means the expiry queue", 2)
        wid = _job_id(waitlist_id, what="waitlist id", own_keys=False)
        result = _with_ops(settings, lambda ops: ops.cancel_expiry(wid), human=not as_json)
        message = cancel_message(result, wid)
    if as_json:
        print_json(
            {
                "queue": result.queue,
                "job_id": result.job_id,
                "outcome": result.outcome,
                "cancelled": result.cancelled,
                "message": message,
            }
        )
    else:
        typer.echo(message)
    raise typer.Exit(0 if result.cancelled else 1)


# --- clean ---------------------------------------------------------------------------


def clean(
    queue: list[str] | None = typer.Option(None, "--queue", "-q", help="Queue to clean (repeatable)."),
    all_queues: bool = typer.Option(False, "--all", help="Clean every queue of the catalog."),
    status: str = typer.Option("completed", "--status", "-s", help=f"One of: {', '.join(CLEAN_STATES)}."),
    grace: str = typer.Option("24h", "--grace", "-g", help="Keep jobs newer than this: 24h, 15m, 30s, 0."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Remove at most N jobs per queue (default: all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be removed; remove nothing."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Remove jobs of one state older than the grace period (BullMQ's Queue.clean).

    Active jobs that still hold a lock are never removed. Prints the count per queue.

    Example: bullwait clean --all --status completed --grace 24h --limit 1000
    """
    settings = settings_from(redis_url)
    if bool(queue) == all_queues:
        raise fail("say which queues: --queue Q (repeatable) or --all", 2)
    keys = queue_keys(queue, settings)
    state = _checked(lambda: normalize_state(status, CLEAN_STATES))
    grace_ms = _checked(lambda: parse_duration_ms(grace, "--grace"))
    _checked(lambda: check_count(limit, "--limit"))

    show_progress = not as_json and not dry_run and err_console.is_terminal

    async def go(ops: Ops) -> list[CleanResult]:
        if not show_progress:
            return await ops.clean(keys, state, grace_ms, limit, dry_run)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            tasks: dict[str, Any] = {}

            def report(name: str, done: int, total: int) -> None:
                if total < 2000:  # short runs need no bar
                    return
                if name not in tasks:
                    tasks[name] = progress.add_task(f"clean {name} {state}", total=total)
                progress.update(tasks[name], completed=done)

            return await ops.clean(keys, state, grace_ms, limit, dry_run, report)

    results = _with_ops(settings, go, human=not as_json)
    if as_json:
        print_json([r.to_json() for r in results])
        return
    verb = "would remove" if dry_run else "removed"
    print_table(
        [{"queue": r.queue, "status": r.status, verb: r.removed} for r in results],
        title=f"clean {state} older than {grace}" + (" (dry run)" if dry_run else ""),
    )


# --- retry / promote -----------------------------------------------------------------


def retry(
    queue: list[str] | None = typer.Option(None, "--queue", "-q", help="Queue to retry (repeatable)."),
    all_queues: bool = typer.Option(False, "--all", help="Retry the failed jobs of every queue of the catalog."),
    count: int | None = typer.Option(None, "--count", "-n", help="Move at most N jobs per queue (default: all)."),
    yes: bool = typer.Option(False, "--yes", "-y", help=f"Do not ask before moving more than {CONFIRM_ABOVE} jobs."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Move failed jobs back to wait (oldest failures first), as Bull Board's "retry all".

    Needs --queue or --all. Asks before moving more than 100 jobs; without a terminal it refuses unless --yes.

    Example: bullwait retry --queue waitlist-notification --count 100
    """
    _move(queue, all_queues, count, yes, as_json, redis_url, "retry")


def promote(
    queue: list[str] | None = typer.Option(None, "--queue", "-q", help="Queue to promote (repeatable)."),
    all_queues: bool = typer.Option(False, "--all", help="Promote the delayed jobs of every queue of the catalog."),
    count: int | None = typer.Option(None, "--count", "-n", help="Promote at most N jobs per queue (default: all)."),
    yes: bool = typer.Option(False, "--yes", "-y", help=f"Do not ask before moving more than {CONFIRM_ABOVE} jobs."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Run delayed jobs now: move them to wait (soonest due first).

    Promoting waitlist-expiry timers ends those offers now. Needs --queue or --all. Asks before moving more than
    100 jobs; without a terminal it refuses unless --yes.

    Example: bullwait promote --queue waitlist-expiry --count 10
    """
    _move(queue, all_queues, count, yes, as_json, redis_url, "promote")


def _move(
    queue: list[str] | None,
    all_queues: bool,
    count: int | None,
    yes: bool,
    as_json: bool,
    redis_url: str | None,
    verb: str,
) -> None:
    settings = settings_from(redis_url)
    if bool(queue) == all_queues:
        raise fail(f"say which queues: --queue Q (repeatable) or --all (`{verb}` with neither used to mean all)", 2)
    keys = queue_keys(queue, settings)
    _checked(lambda: check_count(count, "--count"))
    source = "failed" if verb == "retry" else "delayed"

    async def go(ops: Ops) -> Any:
        if not yes:
            pending = await ops.movable(keys, source, count)
            if sum(pending.values()) > CONFIRM_ABOVE:
                _confirm(verb, source, pending)
        return await getattr(ops, verb)(keys, count)

    results = _with_ops(settings, go, human=not as_json)
    if as_json:
        print_json([r.to_json() for r in results])
        return
    left = "still failed" if verb == "retry" else "still delayed"
    print_table([{"queue": r.queue, "moved to wait": r.moved, left: r.left} for r in results], title=verb)


def _confirm(verb: str, source: str, pending: dict[str, int]) -> None:
    """Ask on a terminal; refuse without one (a script must say --yes)."""
    total = sum(pending.values())
    detail = ", ".join(f"{name} {n}" for name, n in pending.items() if n)
    what = f"{verb} would move {total} {source} jobs to wait ({detail})"
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadArgument(f"{what}: add --yes to confirm, or --count N to move fewer")
    if not typer.confirm(f"{what}. Go ahead?", default=False):
        raise fail("not confirmed; nothing moved", 1)


# --- pause / resume ------------------------------------------------------------------


def pause(
    queue: str = typer.Argument(..., help="Queue to pause."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Pause a queue for every worker (Node and Python): active jobs finish, no new ones start.

    Example: bullwait pause waitlist-notification
    """
    _set_paused(queue, True, as_json, redis_url)


def resume(
    queue: str = typer.Argument(..., help="Queue to resume."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Resume a paused queue.

    Example: bullwait resume waitlist-notification
    """
    _set_paused(queue, False, as_json, redis_url)


def _set_paused(queue: str, paused: bool, as_json: bool, redis_url: str | None) -> None:
    settings = settings_from(redis_url)
    key = queue_key(queue, settings)
    result = _with_ops(settings, lambda ops: ops.set_paused(key, paused), human=not as_json)
    if as_json:
        print_json(result.to_json())
        return
    state = "paused" if paused else "resumed"
    typer.echo(
        f"{result.queue} {state}" + ("" if result.changed else f" (it already was {'paused' if paused else 'running'})")
    )


# --- jobs ----------------------------------------------------------------------------


def jobs_list(
    queue: str = typer.Argument(..., help="Queue name."),
    status: str = typer.Option(..., "--status", "-s", help=f"One of: {', '.join(JOB_STATES)} (or waiting)."),
    limit: int = typer.Option(20, "--limit", "-n", help="Show at most N jobs."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """List jobs of one state: next to run first; newest first for completed and failed.

    Example: bullwait jobs list waitlist-expiry --status delayed --limit 10
    """
    settings = settings_from(redis_url)
    key = queue_key(queue, settings)
    state = _checked(lambda: normalize_state(status))
    _checked(lambda: check_count(limit, "--limit"))
    if limit > 10_000:
        raise fail(f"--limit {limit} is too many to print; use at most 10000", 2)
    jobs = _with_ops(settings, lambda ops: ops.list_jobs(key, state, limit), human=not as_json)
    if as_json:
        print_json([j.to_json() for j in jobs])
        return
    print_table([job_row(j) for j in jobs], title=f"{queue}: {state}")


def jobs_show(
    queue: str = typer.Argument(..., help="Queue name."),
    job_id: str = typer.Argument(..., help="Job id (quote it; use -- before ids that start with '-')."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Show one job: state, data, options, attempts, failedReason, stack trace, logs, local times.

    Example: bullwait jobs show waitlist-expiry expiry_w-42
    """
    settings = settings_from(redis_url)
    key = queue_key(queue, settings)
    jid = _job_id(job_id, queue)

    async def show(ops: Ops) -> Any:
        try:
            return await ops.show_job(key, jid)
        except JobNotFound as exc:
            raise JobNotFound(
                f"{exc}; list them with `bullwait jobs list {ops.queue_name(key)} --status <state>`"
            ) from None

    job = _with_ops(settings, show, human=not as_json)
    if as_json:
        print_json(job.to_json())
        return
    print_job(job)


# --- doctor --------------------------------------------------------------------------


def doctor(
    queue: list[str] | None = QueueOpt,
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Check Redis and every queue; one line per check: ok|warn|fail, the check, what to do.

    Checks: Redis ping and version (6.2+), maxmemory-policy, hz (timer wake-up precision), clock skew
    against Redis TIME, memory vs maxmemory, queue names Node bullmq 5.12.12+ can open.

    Per queue: paused, workers (Node and Python), overdue delayed jobs, stalled active jobs, failed over
    HEALTH_MAX_FAILED, the Node bullmq version in the queue's meta.

    With Redis Sentinel (REDIS_SENTINELS): the sentinels answering, the master they name, and each replica's
    link and lag.

    Exit code: 0 all ok, 1 warnings, 2 failures.

    Example: bullwait doctor --json
    """
    settings = settings_from(redis_url)
    keys = queue_keys(queue, settings)
    report = run_async(lambda: run_doctor(settings, keys))
    if as_json:
        print_json(report.to_json())
    else:
        for line in doctor_lines(report):
            typer.echo(line)
    raise typer.Exit(report.exit_code)


def _help(command: Callable[..., Any]) -> str:
    """The docstring with each paragraph on one line, so rich wraps it to the terminal."""
    text = inspect.cleandoc(command.__doc__ or "")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


jobs_app.command("list", help=_help(jobs_list))(jobs_list)
jobs_app.command("show", help=_help(jobs_show))(jobs_show)


def register(app: typer.Typer) -> None:
    for command in (stats, cancel, clean, retry, promote, pause, resume, doctor):
        app.command(help=_help(command))(command)
    app.add_typer(jobs_app, name="jobs")
