"""`bullwait migrate-legacy`: move jobs from the NestJS module's colon queue names to the current ones."""

from __future__ import annotations

import typer

from bullwait.cli.common import AsJson, RedisUrl, context_line, fail, print_json, run_async, settings_from
from bullwait.cli.render import migration_row, print_table
from bullwait.settings import Settings


def register(app: typer.Typer) -> None:
    @app.command("migrate-legacy")
    def migrate_legacy(
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Count what would move, and report conflicts; change nothing."
        ),
        as_json: bool = AsJson,
        redis_url: str | None = RedisUrl,
    ) -> None:
        """Move waiting, paused, prioritized, delayed and failed jobs from waitlist:* to waitlist-*.

        Delayed jobs keep their due time, failed jobs their reason, attempts and stack trace,
        custom job ids (expiry_<id>) stay the same. Safe to re-run; refuses while legacy
        workers have active jobs. Stop the legacy workers first.

        Example: bullwait migrate-legacy --dry-run
        """
        settings = settings_from(redis_url)
        report = run_async(lambda: _run(settings, dry_run))
        if as_json:
            print_json(report.as_dict())
        else:
            typer.echo(context_line(settings))
            title = (
                "dry run: would move " if dry_run else "moved "
            ) + f"{report.moved if not dry_run else report.found} job(s), prefix {report.prefix}"
            print_table([migration_row(q, dry_run) for q in report.queues], title=title)
        if report.active:
            print(
                f"bullwait: warning: {len(report.active)} active legacy job(s) ({', '.join(report.active[:5])}): "
                "stop the legacy workers before migrating",
                flush=True,
            )
        if report.conflicts:
            raise fail(
                f"{len(report.conflicts)} job id(s) exist on both names and were left on the legacy queue "
                f"({', '.join(report.conflicts[:5])}): inspect them with `bullwait` or Bull Board, "
                "remove one copy, re-run"
            )


async def _run(settings: Settings, dry_run: bool):  # type: ignore[no-untyped-def]
    from bullwait.engine.connection import check_redis
    from bullwait.ops.migrate import migrate_legacy

    await check_redis(settings)
    return await migrate_legacy(settings, dry_run=dry_run)
