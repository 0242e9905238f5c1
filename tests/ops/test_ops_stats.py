"""`bullwait stats` against jobs in every state: counts equal BullMQ's getJobCounts, workers counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess

from bullmq import Queue, Worker

from bullwait.dev.embedded import free_port
from bullwait.engine.connection import redis_options
from bullwait.ops.queues import Ops
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.common import BULLWAIT, ROOT
from helpers.ops_states import populate

REQUIRED = {"name", "waiting", "active", "completed", "failed", "delayed", "prioritized", "paused", "workers"}


async def test_stats_json_matches_getjobcounts(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    result = invoke_cli(env, "stats", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {queue_name(k, settings) for k in QueueKey}
    for row in rows.values():
        assert set(row) >= REQUIRED
    expiry, note = rows[pop.expiry], rows[pop.notification]
    for field, value in pop.counts.items():
        assert expiry[field] == value, (field, expiry)
    assert expiry["paused"] is False and note["paused"] is True and note["waiting"] == 3
    assert expiry["workers"] == 0 and expiry["stalled"] == 1 and expiry["overdue"] == 1
    assert expiry["oldest_waiting_s"] >= 0 and expiry["next_delayed_in_s"] < -60
    # bullmq's own getJobCounts (the same getCounts Lua as Node bullmq 6) agrees on every queue.
    for key in QueueKey:
        q = Queue(queue_name(key, settings), {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
        try:
            counts = await q.getJobCounts()
        finally:
            await q.close()
        row = rows[queue_name(key, settings)]
        for field in ("waiting", "active", "completed", "failed", "delayed", "prioritized"):
            assert row[field] == counts[field], (key, field, row, counts)
        assert row["waiting_children"] == counts["waiting-children"]


async def test_stats_table_and_queue_filter(settings: Settings, env: dict[str, str], sync_redis) -> None:
    await populate(settings, sync_redis)
    result = invoke_cli(env, "stats", "--queue", "expiry")
    assert result.returncode == 0, result.stderr
    assert "waitlist-expiry" in result.stdout and "waitlist-notification" not in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if "waitlist-expiry" in ln)
    cells = line.split()
    assert cells[:8] == ["waitlist-expiry", "4", "2", "6", "2", "2", "3", "no"], cells
    assert cells[8:10] == ["0", "(0/0)"], cells


async def test_legacy_marker_is_not_counted(settings: Settings, env: dict[str, str], sync_redis) -> None:
    """A Node bullmq 4 wake-up marker ("0:<ts>") at the wait list's tail is not a job, as in getCounts."""
    name = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    sync_redis.rpush(f"{settings.bullmq_prefix}:{name}:wait", "0:1700000000000")
    rows = json.loads(invoke_cli(env, "stats", "--json", "-q", name).stdout)
    assert rows[0]["waiting"] == 0
    assert sync_redis.llen(f"{settings.bullmq_prefix}:{name}:wait") == 1  # stats never writes


async def test_workers_counted_python_and_stock(settings: Settings, env: dict[str, str], start_worker) -> None:
    """A `bullwait worker` process counts once per queue; a stock bullmq-py Worker counts too."""
    worker = start_worker("--queue", "waitlist-expiry")
    expiry = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    note = queue_name(QueueKey.WAITLIST_NOTIFICATION, settings)

    async def rows() -> dict[str, dict]:
        async with await Ops.open(settings) as ops:
            return {s.name: s.to_json() for s in await ops.stats()}

    # "worker started" is logged before its connections are named and blocking: on a busy
    # machine the first CLIENT LIST can come before that.
    for _ in range(200):
        got = await rows()
        if got[expiry]["workers"]:
            break
        await asyncio.sleep(0.05)
    assert (got[expiry]["workers"], got[expiry]["workers_python"], got[expiry]["workers_node"]) == (1, 1, 0)
    assert got[note]["workers"] == 0
    stock = Worker(
        note, _noop, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "name": "stock"}
    )
    try:
        for _ in range(100):
            got = await rows()
            if got[note]["workers"] == 1:
                break
            await asyncio.sleep(0.05)
        assert got[note]["workers"] == 1 and got[note]["workers_python"] == 1
        assert got[expiry]["workers"] == 1
    finally:
        # A stock Worker's close can miss the cancellation of its blocking wait and hang for
        # good (docs/performance.md, "Stopping while the BZPOPMIN leaves"); not what this checks.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stock.close(force=True), 15)
        worker.terminate()


async def _noop(job, token):  # type: ignore[no-untyped-def]
    return None


def test_watch_prints_a_table_per_refresh(settings: Settings, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*BULLWAIT, "stats", "--watch", "0.2", "--json", "-q", "expiry"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    rows = [json.loads(line) for line in lines]
    assert all(r[0]["name"] == queue_name(QueueKey.WAITLIST_EXPIRY, settings) for r in rows)
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_redis_refusing_commands_is_one_line(env: dict[str, str], sync_redis, prefix: str) -> None:
    """A user whose ACL allows PING and INFO but not scripts: a clear line, no traceback."""
    user = f"ro-{prefix}"
    sync_redis.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+ping", "+info", "+client|list", "+hello")
    try:
        url = env["REDIS_URL"].replace("redis://", f"redis://{user}:pw@")
        result = invoke_cli(dict(env, REDIS_URL=url), "stats")
    finally:
        sync_redis.execute_command("ACL", "DELUSER", user)
    assert result.returncode == 1, result
    assert result.stderr.startswith("bullwait: error: Redis refused a command:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_unreachable_redis_is_one_line(env: dict[str, str]) -> None:
    dead = dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    # The first through the installed entry point (exit status as a shell sees it), the rest in process.
    for n, args in enumerate(
        (["stats"], ["stats", "--json"], ["jobs", "list", "expiry", "--status", "failed"], ["retry", "--all"])
    ):
        if n == 0:
            result = subprocess.run([*BULLWAIT, *args], env=dead, capture_output=True, text=True, timeout=20, cwd=ROOT)
        else:
            result = invoke_cli(dead, *args, timeout=20)
        assert result.returncode == 3, (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach Redis" in lines[0] and "Traceback" not in result.stderr, result.stderr
