"""cancel, clean, retry, promote, pause/resume and jobs against jobs in every state."""

from __future__ import annotations

import json
import time

from bullmq import Queue

from bullwait.engine.connection import redis_options
from bullwait.ops.queues import BATCH, Ops
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.ops_states import populate


def _stats(env: dict[str, str], queue: str) -> dict:
    result = invoke_cli(env, "stats", "--json", "--queue", queue)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def _state(sync_redis, settings: Settings, queue: str, job_id: str) -> str:
    """Where a job is, read straight from the keys."""
    base = f"{settings.bullmq_prefix}:{queue}:"
    for zset in ("completed", "failed", "delayed", "prioritized"):
        if sync_redis.zscore(base + zset, job_id) is not None:
            return zset
    for lst in ("active", "wait", "paused"):
        if job_id in sync_redis.lrange(base + lst, 0, -1):
            return lst
    return "gone" if not sync_redis.exists(base + job_id) else "orphan"


async def test_cancel_every_state(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    expected = {
        "wait-0": (0, "cancelled the expiry timer"),
        "delay-0": (0, "cancelled the expiry timer"),
        "prio-0": (0, "cancelled the expiry timer"),
        "active-0": (1, "is active"),
        "completed-0": (1, "is completed"),
        "failed-0": (1, "is failed"),
        "nobody": (1, "no expiry timer for waitlist nobody"),
    }
    for waitlist_id, (code, text) in expected.items():
        result = invoke_cli(env, "cancel", waitlist_id)
        assert result.returncode == code and text in result.stdout, (waitlist_id, result)
        gone = _state(sync_redis, settings, pop.expiry, f"expiry_{waitlist_id}") == "gone"
        assert gone == (code == 0 or waitlist_id == "nobody"), waitlist_id
    # any job on any queue, in a paused queue too
    result = invoke_cli(env, "cancel", "--queue", pop.notification, "--job", "note-1", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["outcome"] == "cancelled"
    result = invoke_cli(env, "cancel", "--queue", pop.notification, "--job", "note-1")
    assert result.returncode == 1 and "no job note-1" in result.stdout
    # odd but legal ids are looked up verbatim
    result = invoke_cli(env, "cancel", "--queue", "expiry", "--job", "ids with spaces & *?")
    assert result.returncode == 1 and "no job ids with spaces & *?" in result.stdout


async def test_clean_states_grace_limit_dry_run(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    q = pop.expiry
    # Grace keeps recent jobs.
    result = invoke_cli(env, "clean", "--queue", q, "--status", "completed", "--grace", "1h", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["removed"] == 0
    # Dry run counts and removes nothing.
    result = invoke_cli(env, "clean", "--queue", q, "--status", "failed", "--grace", "0", "--dry-run", "--json")
    row = json.loads(result.stdout)[0]
    assert row["removed"] == 3 and row["dry_run"] is True and _stats(env, q)["failed"] == 3
    # Limit.
    result = invoke_cli(env, "clean", "--queue", q, "--status", "failed", "--grace", "0", "--limit", "2", "--json")
    assert json.loads(result.stdout)[0]["removed"] == 2 and _stats(env, q)["failed"] == 1
    # Active: only the job whose lock expired goes; the locked one stays (BullMQ's clean).
    result = invoke_cli(env, "clean", "--queue", q, "--status", "active", "--grace", "0", "--dry-run", "--json")
    assert json.loads(result.stdout)[0]["job_ids"] == ["expiry_stalled-0"]
    result = invoke_cli(env, "clean", "--queue", q, "--status", "active", "--grace", "0", "--json")
    assert json.loads(result.stdout)[0]["job_ids"] == ["expiry_stalled-0"]
    assert _state(sync_redis, settings, q, "expiry_active-0") == "active"
    assert _state(sync_redis, settings, q, "expiry_stalled-0") == "gone"
    # wait and delayed, all queues, table output.
    for status, gone in (("wait", 4), ("delayed", 6), ("prioritized", 2)):
        dry = json.loads(
            invoke_cli(env, "clean", "--all", "--status", status, "--grace", "0", "--dry-run", "--json").stdout
        )
        result = invoke_cli(env, "clean", "--all", "--status", status, "--grace", "0")
        assert result.returncode == 0, result.stderr
        line = next(ln for ln in result.stdout.splitlines() if q in ln)
        assert line.rstrip(" │").endswith(str(gone)), (status, result.stdout)
        assert [r["removed"] for r in dry if r["queue"] == q] == [gone]
    stats = _stats(env, q)
    assert (stats["waiting"], stats["delayed"], stats["prioritized"], stats["active"]) == (0, 0, 0, 1)
    # A paused queue keeps its jobs in `wait` (BullMQ >= 5), so --all cleaned them too.
    assert _stats(env, pop.notification)["waiting"] == 0


async def test_clean_in_batches_reports_all(settings: Settings, env: dict[str, str], sync_redis) -> None:
    """More finished jobs than one batch (BATCH): all removed, the count is exact."""
    name = queue_name(QueueKey.PREFERENCE_CALCULATION, settings)
    base = f"{settings.bullmq_prefix}:{name}:"
    now = int(time.time() * 1000) - 10_000
    pipe = sync_redis.pipeline()
    for i in range(2500):
        pipe.hset(
            base + f"p{i}",
            mapping={"name": "calculate-preferences", "data": "{}", "opts": "{}", "timestamp": now, "finishedOn": now},
        )
        pipe.zadd(base + "completed", {f"p{i}": now})
    pipe.execute()
    progress: list[tuple[str, int, int]] = []
    async with await Ops.open(settings) as ops:
        dry = await ops.clean([QueueKey.PREFERENCE_CALCULATION], "completed", 5000, 2200, dry_run=True)
        assert dry[0].removed == 2200 and sync_redis.zcard(base + "completed") == 2500
        done = await ops.clean(
            [QueueKey.PREFERENCE_CALCULATION], "completed", 5000, 2200, on_progress=lambda *a: progress.append(a)
        )
    assert done[0].removed == 2200
    steps = [*range(0, 2200, BATCH), 2200]
    assert progress == [(name, done, 2200) for done in steps]
    result = invoke_cli(env, "clean", "--queue", name, "--grace", "5s", "--json")
    assert json.loads(result.stdout)[0]["removed"] == 300
    assert sync_redis.zcard(base + "completed") == 0 and not sync_redis.exists(base + "p7")


async def test_retry_and_promote(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    q = pop.expiry
    result = invoke_cli(env, "retry", "--queue", q, "--count", "2", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0] == {
        "queue": q,
        "source": "failed",
        "moved": 2,
        "left": 1,
    }
    retried = [j for j in pop.ids["failed"] if _state(sync_redis, settings, q, j) == "wait"]
    assert retried == ["expiry_failed-0", "expiry_failed-1"]  # oldest failures first
    assert sync_redis.hget(f"{settings.bullmq_prefix}:{q}:expiry_failed-0", "failedReason") is None
    result = invoke_cli(env, "retry", "--all")
    assert result.returncode == 0 and q in result.stdout
    assert _stats(env, q)["failed"] == 0 and _stats(env, q)["waiting"] == 7
    # promote: the soonest due first (the overdue timer), then the rest
    result = invoke_cli(env, "promote", "--queue", "expiry", "--count", "1", "--json")
    assert json.loads(result.stdout)[0]["moved"] == 1
    assert _state(sync_redis, settings, q, "expiry_late-0") == "wait"
    result = invoke_cli(env, "promote", "--all", "--json")
    rows = {r["queue"]: r for r in json.loads(result.stdout)}
    assert rows[q]["moved"] == 5 and rows[q]["left"] == 0
    assert _stats(env, q)["waiting"] == 13


async def test_pause_resume(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    result = invoke_cli(env, "pause", "expiry")
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == f"{pop.expiry} paused"
    assert _stats(env, pop.expiry)["paused"] is True and _stats(env, pop.expiry)["waiting"] == 4
    assert "already was paused" in invoke_cli(env, "pause", pop.expiry).stdout
    # bullmq itself sees it paused, and the event went out (Bull Board/QueueEvents see it).
    q = Queue(pop.expiry, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
    try:
        assert await q.isPaused() is True
        result = invoke_cli(env, "resume", pop.expiry, "--json")
        assert json.loads(result.stdout) == {"queue": pop.expiry, "paused": False, "changed": True}
        assert await q.isPaused() is False
    finally:
        await q.close()
    events = [
        dict(zip(f[::2], f[1::2])) if isinstance(f, list) else f
        for _, f in sync_redis.xrange(f"{settings.bullmq_prefix}:{pop.expiry}:events")
    ]
    assert [e["event"] for e in events if e["event"] in ("paused", "resumed")] == ["paused", "paused", "resumed"]
    result = invoke_cli(env, "resume", pop.notification)
    assert result.returncode == 0 and _stats(env, pop.notification)["paused"] is False


async def test_legacy_paused_list_resumes(settings: Settings, env: dict[str, str], sync_redis) -> None:
    """A queue paused by Node bullmq 4 keeps its jobs in `paused`; resume moves them to wait."""
    name = queue_name(QueueKey.WAITLIST_NOTIFICATION, settings)
    base = f"{settings.bullmq_prefix}:{name}:"
    sync_redis.hset(base + "meta", "paused", 1)
    for i in range(3):
        sync_redis.hset(
            base + f"{i + 1}", mapping={"name": "send-slot-available", "data": "{}", "opts": "{}", "timestamp": 1}
        )
        sync_redis.lpush(base + "paused", str(i + 1))
    row = _stats(env, name)
    assert row["paused"] is True and row["paused_list"] == 3 and row["waiting"] == 0
    assert invoke_cli(env, "resume", name).returncode == 0
    row = _stats(env, name)
    assert row["paused"] is False and row["paused_list"] == 0 and row["waiting"] == 3


async def test_jobs_list_and_show(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    q = pop.expiry
    expected = {
        "waiting": ["expiry_wait-0", "expiry_wait-1", "expiry_wait-2", "expiry_wait-3"],  # next to run first
        "failed": ["expiry_failed-2", "expiry_failed-1", "expiry_failed-0"],  # newest first
        "delayed": ["expiry_late-0", "expiry_delay-0", "expiry_delay-1"],  # soonest due first
        "prioritized": ["expiry_prio-0", "expiry_prio-1"],
    }
    for status, ids in expected.items():
        result = invoke_cli(
            env, "jobs", "list", q, "--status", status, "--limit", "3" if status == "delayed" else "10", "--json"
        )
        assert result.returncode == 0, result.stderr
        assert [j["id"] for j in json.loads(result.stdout)] == ids, status
    result = invoke_cli(env, "jobs", "list", q, "--status", "failed")
    assert result.returncode == 0 and "expiry_failed-0" in result.stdout and "WhatsApp said 131026" in result.stdout
    assert "(nothing)" in invoke_cli(env, "jobs", "list", q, "--status", "waiting-children").stdout

    result = invoke_cli(env, "jobs", "show", q, "expiry_failed-0", "--json")
    job = json.loads(result.stdout)
    assert job["state"] == "failed" and job["failed_reason"] == "WhatsApp said 131026"
    assert job["attempts_made"] == 1 and job["max_attempts"] == 1 and job["logs"] == ["calling WhatsApp"]
    assert job["data"] == {k: v for k, v in job["data"].items()} and job["data"]["waitlistId"] == "failed-0"
    assert job["opts"]["backoff"] == {"type": "exponential", "delay": 1000}
    assert job["local_times"]["finished"] and job["stacktrace"]
    result = invoke_cli(env, "jobs", "show", q, "expiry_failed-0")
    out = result.stdout
    for text in (
        "state:",
        "failed",
        "attempts:",
        "failedReason: WhatsApp said 131026",
        "data:",
        '"waitlistId": "failed-0"',
        "options:",
        "stacktrace (1):",
        "logs (1):",
        "calling WhatsApp",
        "finished:",
    ):
        assert text in out, (text, out)
    local = time.strftime("%Y-%m-%dT", time.localtime())
    assert f"created:      {local}" in out
    delayed = json.loads(invoke_cli(env, "jobs", "show", q, "expiry_delay-0", "--json").stdout)
    assert delayed["state"] == "delayed" and delayed["due_at"] - delayed["timestamp"] == 15 * 60_000
    active = json.loads(invoke_cli(env, "jobs", "show", q, "expiry_active-0", "--json").stdout)
    assert active["state"] == "active" and active["locked"] is True
    missing = invoke_cli(env, "jobs", "show", q, "no-such-job")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no job 'no-such-job'" in missing.stderr


async def test_show_job_with_undecodable_data(settings: Settings, env: dict[str, str], sync_redis) -> None:
    name = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    base = f"{settings.bullmq_prefix}:{name}:"
    sync_redis.hset(
        base + "broken", mapping={"name": "check-expiry", "data": "{not json", "opts": "{}", "timestamp": 1}
    )
    sync_redis.lpush(base + "wait", "broken")
    result = invoke_cli(env, "jobs", "show", name, "broken")
    assert result.returncode == 0 and "not valid JSON" in result.stdout and "{not json" in result.stdout
    assert (
        json.loads(invoke_cli(env, "jobs", "list", name, "--status", "wait", "--json").stdout)[0]["data_is_json"]
        is False
    )
