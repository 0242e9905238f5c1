"""What every command shares: settings with `--redis-url`, one-line errors, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import typer
from redis.exceptions import RedisClusterException, RedisError
from rich.console import Console

from bullwait.errors import BullwaitError, RedisIsClusterNode
from bullwait.logs import first_line
from bullwait.runtime.runner import run_until_done
from bullwait.settings import Settings, load_settings
from bullwait.waitlist.catalog import QueueKey, resolve_queue

T = TypeVar("T")

err_console = Console(stderr=True)

RedisUrl = typer.Option(
    None,
    "--redis-url",
    envvar="REDIS_URL",
    help="Redis to use, e.g. redis://localhost:6379/1 (overrides REDIS_HOST/PORT/QUEUE_DB).",
    show_envvar=True,
)
AsJson = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `bullwait: error: <message>` on stderr and exit with `code`."""
    print(f"bullwait: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def settings_from(redis_url: str | None = None, **overrides: Any) -> Settings:
    try:
        return load_settings(redis_url=redis_url, **overrides)
    except BullwaitError as exc:
        raise fail(str(exc), exc.exit_code) from None


def queue_keys(names: Sequence[str] | None, settings: Settings) -> list[QueueKey]:
    """The catalog's queues `names` name (by name, key or alias; each once, in order), every
    queue when none is named. An unknown name is one line and its exit code."""
    if not names:
        return list(QueueKey)
    keys: list[QueueKey] = []
    for name in names:
        try:
            key = resolve_queue(name, settings)
        except BullwaitError as exc:
            raise fail(str(exc), exc.exit_code) from None
        if key not in keys:
            keys.append(key)
    return keys


def queue_key(name: str, settings: Settings) -> QueueKey:
    """The one queue `name` names (see `queue_keys`)."""
    return queue_keys([name], settings)[0]


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn bullwait errors into one line and their exit code."""
    try:
        return run_until_done(_run(make))
    except BullwaitError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except (RedisError, RedisClusterException, OSError) as exc:  # Redis went away or refused a command mid-way
        from bullwait.engine.connection import cluster_reply_message

        redirect = cluster_reply_message(exc)
        if redirect is not None:  # a one-node address at a cluster node: a configuration error
            raise fail(redirect, RedisIsClusterNode.exit_code) from None
        raise fail(f"Redis failed during the command: {first_line(exc)}", 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _run(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def context_line(settings: Settings, prefix: str | None = None) -> str:
    """Which Redis, db and key prefix a command works on (password masked), for human output."""
    from bullwait.engine.connection import describe_redis

    return f"Redis {describe_redis(settings)}, prefix {prefix or settings.bullmq_prefix}"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
