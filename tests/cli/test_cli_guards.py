"""The CLI's guards: bad URLs and numbers as one line, confirmations, orientation.

In-process through Typer's CliRunner (no interpreter start per case); one subprocess test
keeps the real entry point honest.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
from redis import Redis
from typer.testing import CliRunner, Result

from bullwait.cli.common import queue_keys
from bullwait.cli.main import app
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey

from helpers.common import BULLWAIT, ROOT

SECRET = "S3cretPw"
BAD_URL = f"redis://app:{SECRET}#1@localhost:6379/1"  # an unencoded '#' in the password

# Every command that reads settings, with the least arguments it needs to get that far.
ENTRY_POINTS = [
    ["worker"],
    ["serve"],
    ["demo", "--embedded-redis", "never"],
    ["stats"],
    ["clean", "--all"],
    ["retry", "--all"],
    ["promote", "--all"],
    ["pause", "expiry"],
    ["resume", "expiry"],
    ["jobs", "list", "expiry", "--status", "failed"],
    ["jobs", "show", "expiry", "x1"],
    ["cancel", "w-1"],
    ["doctor"],
    ["prefs", "c-1"],
    ["migrate-legacy", "--dry-run"],
]


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


async def ainvoke(env: dict[str, str], *args: str) -> Result:
    """`invoke` from an async test: the CLI runs its own event loop, so not in the test's."""
    return await asyncio.to_thread(invoke, env, *args)


def assert_one_line(result: Result, expected: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize("args", ENTRY_POINTS, ids=lambda a: " ".join(a[:2]))
def test_every_entry_point_refuses_a_bad_url_in_one_line(env: dict[str, str], args: list[str]) -> None:
    for how in ("env", "flag"):
        if how == "env":
            result = invoke(dict(env, REDIS_URL=BAD_URL), *args)
        else:
            result = invoke(env, *args, "--redis-url", BAD_URL)
        line = assert_one_line(result, "REDIS_URL")
        assert "%23" in line and SECRET[:4] not in result.stdout + result.stderr, (how, line)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["clean", "-q", "expiry", "--grace", "1" + "0" * 400 + "s"], "--grace: '1000"),
        (["clean", "-q", "expiry", "--limit", str(10**30)], "--limit must be at most 1000000000 (got a 31-digit"),
        (["promote", "-q", "expiry", "--count", "10000000000"], "--count must be at most 1000000000"),
        (["retry", "-q", "expiry", "--count", str(10**30)], "--count must be at most"),
        (["stats", "--redis-url", "redis://["], "both brackets"),
        (["stats", "--redis-url", "redis://localhost:99999/1"], "1 to 65535 (got 99999)"),
        (["stats", "--redis-url", "redis://localhost:6379/abc"], '"abc" is not a database number'),
    ],
)
def test_odd_numbers_and_urls_are_one_line(env: dict[str, str], args: list[str], expected: str) -> None:
    line = assert_one_line(invoke(env, *args), expected)
    assert len(line) < 300, line


def test_real_entry_point_hides_the_password(env: dict[str, str]) -> None:
    """`bullwait worker` as installed: exit 2, one line on stderr, no password, no traceback."""
    result = subprocess.run(
        [*BULLWAIT, "worker"], env=dict(env, REDIS_URL=BAD_URL), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bullwait: error: invalid setting REDIS_URL"), result.stderr
    assert SECRET[:4] not in result.stderr + result.stdout


# --- retry / promote: say which queues, confirm big moves (item 13) ---------------------


async def _delayed_jobs(settings: Settings, n: int) -> str:
    from bullmq import Queue

    from bullwait.engine.connection import redis_options
    from bullwait.waitlist.catalog import QueueKey, queue_name

    name = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    queue = Queue(name, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
    try:
        await queue.addBulk(
            [
                {
                    "name": "expire-offer",
                    "data": {"waitlistId": f"w-{i}"},
                    "opts": {"jobId": f"expiry_w-{i}", "delay": 15 * 60_000},
                }
                for i in range(n)
            ]
        )
    finally:
        await queue.close()
    return name


@pytest.mark.parametrize("verb", ["retry", "promote"])
def test_retry_and_promote_need_queue_or_all(env: dict[str, str], verb: str) -> None:
    assert_one_line(invoke(env, verb), "say which queues: --queue Q (repeatable) or --all")
    assert_one_line(invoke(env, verb, "--all", "--queue", "expiry"), "--queue Q (repeatable) or --all")


async def test_promoting_many_needs_yes(env: dict[str, str], settings: Settings, sync_redis: Redis) -> None:
    name = await _delayed_jobs(settings, 101)
    delayed = f"{settings.bullmq_prefix}:{name}:delayed"
    line = assert_one_line(await ainvoke(env, "promote", "--queue", "expiry"), "add --yes to confirm")
    assert f"promote would move 101 delayed jobs to wait ({name} 101)" in line
    assert sync_redis.zcard(delayed) == 101  # nothing moved
    result = await ainvoke(env, "promote", "--all", "--count", "100", "--json")  # at the threshold: no question
    assert result.exit_code == 0 and sync_redis.zcard(delayed) == 1, result.stderr
    await _delayed_jobs(settings, 101)
    result = await ainvoke(env, "promote", "--queue", "expiry", "--yes", "--json")
    assert result.exit_code == 0 and sync_redis.zcard(delayed) == 0, result.stderr


# --- orientation: which Redis, which db, and is it the right one (item 13) ---------------


def test_human_output_names_redis_db_and_prefix(env: dict[str, str], sync_redis: Redis, prefix: str) -> None:
    user = f"op-{prefix}"
    sync_redis.execute_command("ACL", "SETUSER", user, "on", f">{SECRET}", "~*", "&*", "+@all")
    try:
        url = env["REDIS_URL"].replace("redis://", f"redis://{user}:{SECRET}@")
        result = invoke(dict(env, REDIS_URL=url), "stats")
    finally:
        sync_redis.execute_command("ACL", "DELUSER", user)
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"Redis {url.replace(SECRET, '***')}, prefix {prefix}", first
    assert first.endswith(f"/0, prefix {prefix}") and SECRET not in result.stdout + result.stderr
    # This prefix holds no queue yet: say so, on stderr, once.
    assert result.stderr.count("holds none of the catalog's queues") == 1, result.stderr
    assert "likely the wrong db" in result.stderr and "BULLMQ_PREFIX" in result.stderr
    as_json = invoke(env, "stats", "--json")
    assert as_json.exit_code == 0 and as_json.stdout.lstrip().startswith("[") and as_json.stderr == ""


async def test_no_warning_once_a_queue_exists(env: dict[str, str], settings: Settings) -> None:
    from bullwait.ops.presence import queue_presence
    from bullwait.ops.queues import Ops

    async with await Ops.open(settings) as ops:
        assert (await queue_presence(ops.client, settings)).warning() is not None
    await _delayed_jobs(settings, 1)
    for args in (["stats"], ["jobs", "list", "expiry", "--status", "delayed"], ["pause", "expiry"]):
        result = await ainvoke(env, *args)
        assert result.exit_code == 0 and result.stderr == "", (args, result.stderr)
        assert result.stdout.startswith(f"Redis {settings.redis_address.display()}, prefix "), (args, result.stdout)
    result = await ainvoke(env, "doctor")
    found = next(line for line in result.stdout.splitlines() if "queues-found" in line)
    assert found.startswith("ok") and "waitlist-expiry" in found, found


def test_doctor_warns_about_an_empty_db(env: dict[str, str]) -> None:
    result = invoke(env, "doctor")
    found = next(line for line in result.stdout.splitlines() if "queues-found" in line)
    assert found.startswith("warn") and "holds none of the catalog's queues" in found, found
    assert "/0, Redis " in result.stdout  # the redis check names the db


def test_worker_first_line_names_redis_and_warns(start_worker: Any, env: dict[str, str]) -> None:
    import json

    worker = start_worker("--queue", "expiry")
    worker.wait_for_log("no catalog queue in this Redis db")
    worker.terminate()
    first = json.loads(worker.log().splitlines()[0])
    assert first["event"] == "worker starting" and first["redis"] == env["REDIS_URL"], first
    assert first["prefix"] == env["BULLMQ_PREFIX"] and first["queues"] == ["waitlist-expiry"]


# --- stats at 80 columns, bullmq's own keys as job ids (item 13) -------------------------


def test_stats_reads_well_at_80_columns(env: dict[str, str]) -> None:
    result = invoke(dict(env, COLUMNS="80"), "stats")
    assert result.exit_code == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "…" not in result.stdout, result.stdout
    for label in (
        "waiting",
        "prioritized",
        "delayed",
        "completed",
        "failed",
        "workers (node/py)",
        "oldest waiting",
        "expiry",
        "notification",
        "preference-calculation",
    ):
        assert label in result.stdout, (label, result.stdout)
    wide = invoke(dict(env, COLUMNS="200"), "stats")  # wide enough: one row per queue, as before
    assert any(line.split()[:1] == ["waitlist-expiry"] for line in wide.stdout.splitlines()), wide.stdout


@pytest.mark.parametrize(
    "job_id, expected",
    [
        ("meta", "'meta' names a key BullMQ keeps for the queue itself"),
        ("events", "names a key BullMQ keeps"),
        ("metrics:completed", "names a key BullMQ keeps"),
        ("expiry_w-0:logs", "names the 'logs' key of job 'expiry_w-0'"),
    ],
)
async def test_jobs_show_refuses_bullmq_own_keys(
    env: dict[str, str], settings: Settings, job_id: str, expected: str
) -> None:
    await _delayed_jobs(settings, 1)  # the queue's meta, events and the job's keys exist
    assert_one_line(await ainvoke(env, "jobs", "show", "expiry", job_id), expected)
    assert_one_line(await ainvoke(env, "cancel", "--queue", "expiry", "--job", job_id), expected)
    shown = await ainvoke(env, "jobs", "show", "expiry", "expiry_w-0")
    assert shown.exit_code == 0 and "expiry_w-0" in shown.stdout


# --- a second worker on one host: the metrics port (item 13) -----------------------------


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    warning = error = info


async def test_default_metrics_port_in_use_moves_to_a_free_one(settings: Settings) -> None:
    import socket

    import httpx

    from bullwait.monitoring.server import monitoring

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # As if `busy` were the default 9090 and METRICS_PORT unset (the port other tests never use).
        default = Settings.model_construct(_fields_set={"redis_url"}, **dict(dict(settings), metrics_port=busy))
        log = _Log()
        async with monitoring(default, ["waitlist-expiry"], log=log) as server:
            assert server is not None and server.port not in (0, busy)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{server.port}/health/live")).status_code == 200
        moved = next(fields for event, fields in log.lines if event.startswith("metrics port in use"))
        assert moved["wanted"] == busy and "METRICS_PORT" in str(moved["advice"])
        listening = next(fields for event, fields in log.lines if event == "monitoring server listening")
        assert listening["port"] == server.port
        # A port the operator chose is held to: one clear error naming the ways out.
        chosen = Settings(redis_url=settings.redis_url, metrics_port=busy)
        with pytest.raises(Exception) as info:
            async with monitoring(chosen, ["waitlist-expiry"], log=_Log()):
                pass
        message = str(info.value)
        assert "address already in use" in message and "--processes N" in message and "METRICS_PORT" in message


def test_every_command_reads_queue_names_alike(env: dict[str, str], settings: Settings) -> None:
    """One reading of --queue for worker, serve and the ops commands: names, keys and aliases,
    each queue once, an unknown name one line naming the known ones."""
    named = ["notification", "waitlist-expiry", "expiry", "WAITLIST_NOTIFICATION"]
    assert queue_keys(named, settings) == [QueueKey.WAITLIST_NOTIFICATION, QueueKey.WAITLIST_EXPIRY]
    assert queue_keys(None, settings) == list(QueueKey)
    for args in (["worker", "-q", "nope"], ["serve", "-q", "nope"], ["stats", "-q", "nope"], ["pause", "nope"]):
        assert_one_line(invoke(env, *args), "unknown queue 'nope'; known queues: ")
