"""The NestJS module's stack (Node bullmq 4.18, colon queue names) -> bullwait legacy mode, then current names."""

from __future__ import annotations

import json
from typing import Any

from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.common import wait_job_state
from helpers.jobdata import notification_data, preference_data
from helpers.nodecompat import (
    legacy,
    nest,
    node_json,
    node_required,
    seed_booking,
    seed_entry,
    seed_slot,
    start_node,  # noqa: F401 (fixture)
)

pytestmark = node_required

MIN = 60_000


def _legacy(settings: Settings) -> Settings:
    return settings.with_overrides(bullwait_queue_names=QueueNaming.LEGACY)


async def test_legacy_producer_is_served_by_bullwait_in_legacy_mode(env, settings: Settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(extra_env={"BULLWAIT_QUEUE_NAMES": "legacy"})
    entry, slot = seed_entry("w-old"), seed_slot()
    ids = legacy(
        env,
        "batch",
        [
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": entry, "slot": slot, "delayMs": 300}},
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry, "slot": slot}},
            {"action": "calculatePreferencesAfterBooking", "args": {"customerId": "cust-1", "booking": seed_booking()}},
        ],
    )
    async with Producer(_legacy(settings)) as producer:
        for key, result in zip(QueueKey, ids):
            await wait_job_state(producer.queue(key), result["jobId"], "completed")
    assert worker.terminate() == 0
    log = worker.log()
    assert "waitlist:expiry" in log and "expiry_w-old" in log and "Invalid job data" not in log


def _snapshot(sync_redis: Any, prefix: str, queue: str) -> dict[str, Any]:
    base = f"{prefix}:{queue}:"
    out: dict[str, Any] = {"jobs": {}, "states": {}}
    for state in ("wait", "paused", "prioritized", "delayed", "failed", "active"):
        key = base + state
        if sync_redis.type(key) == "list":
            ids = [i for i in sync_redis.lrange(key, 0, -1) if not i.startswith("0")]
            out["states"][state] = {i: None for i in ids}
        else:
            out["states"][state] = dict(sync_redis.zrange(key, 0, -1, withscores=True))
        for job_id in out["states"][state]:
            out["jobs"][job_id] = sync_redis.hgetall(base + job_id)
    return out


def _migrate(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    proc = invoke_cli(env, "migrate-legacy", "--json", *args)
    try:
        body = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1]) if "}" in proc.stdout else None
    except ValueError:
        body = None
    return proc.returncode, body, proc.stderr + proc.stdout


async def test_migrate_legacy_moves_every_job_with_its_due_time(
    env, settings: Settings, start_node, start_worker, sync_redis, prefix
) -> None:  # type: ignore[no-untyped-def]
    # 1. A 4.x worker fails one job for good and leaves one waiting for a 10-minute backoff retry.
    old = start_node(
        "legacy/worker4.js", "WAITLIST_NOTIFICATION", "--fail", "whatsapp down", ready="legacy worker ready"
    )
    legacy(
        env,
        "batch",
        [
            {
                "action": "add",
                "args": {
                    "queue": "WAITLIST_NOTIFICATION",
                    "name": "send-slot-available",
                    "data": notification_data("w-f"),
                    "opts": {"jobId": "n-fail", "attempts": 2, "backoff": {"type": "fixed", "delay": 10}},
                },
            },
            {
                "action": "add",
                "args": {
                    "queue": "WAITLIST_NOTIFICATION",
                    "name": "send-slot-available",
                    "data": notification_data("w-r"),
                    "opts": {"jobId": "n-retry", "attempts": 3, "backoff": {"type": "fixed", "delay": 10 * MIN}},
                },
            },
        ],
    )
    async with Producer(_legacy(settings)) as old_side:
        await wait_job_state(old_side.queue(QueueKey.WAITLIST_NOTIFICATION), "n-fail", "failed")
        await wait_job_state(old_side.queue(QueueKey.WAITLIST_NOTIFICATION), "n-retry", "delayed")
    assert old.stop() == 0

    # 2. Timers, prioritized and plain notifications, a paused preference queue, from the NestJS module's 4.x code.
    entry, slot = seed_entry, seed_slot()
    legacy(
        env,
        "batch",
        [
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": entry("w-1"), "slot": slot}},
            {
                "action": "notifyWaitlistCustomer",
                "args": {"waitlistEntry": entry("w-2"), "slot": slot, "delayMs": 20 * MIN},
            },
            {
                "action": "notifyWaitlistCustomer",
                "args": {"waitlistEntry": entry("w-3"), "slot": slot, "delayMs": 60 * MIN},
            },
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry("w-4"), "slot": slot}},
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry("w-5"), "slot": slot}},
            {
                "action": "add",
                "args": {
                    "queue": "WAITLIST_NOTIFICATION",
                    "name": "send-slot-available",
                    "data": notification_data("w-6"),
                },
            },
            {
                "action": "add",
                "args": {
                    "queue": "WAITLIST_NOTIFICATION",
                    "name": "send-slot-available",
                    "data": notification_data("w-7"),
                },
            },
            {"action": "pause", "args": {"queue": "PREFERENCE_CALCULATION"}},
            {
                "action": "add",
                "args": {
                    "queue": "PREFERENCE_CALCULATION",
                    "name": "calculate-preferences",
                    "data": preference_data("b-p1"),
                    "opts": {"priority": 0},
                },
            },
            {
                "action": "add",
                "args": {
                    "queue": "PREFERENCE_CALCULATION",
                    "name": "calculate-preferences",
                    "data": preference_data("b-p2"),
                    "opts": {"priority": 0},
                },
            },
            {
                "action": "calculatePreferencesAfterBooking",
                "args": {"customerId": "cust-1", "booking": seed_booking("b-p3")},
            },
        ],
    )
    # 3. Meanwhile the upgraded NestJS app (bullmq 6) already produces on the current names: ids 1-4 are taken.
    nest(
        env,
        "batch",
        [
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry(f"w-new{i}"), "slot": slot}}
            for i in (1, 2, 3, 4)
        ],
    )

    names = {
        "WAITLIST_EXPIRY": ("waitlist:expiry", "waitlist-expiry"),
        "WAITLIST_NOTIFICATION": ("waitlist:notification", "waitlist-notification"),
        "PREFERENCE_CALCULATION": ("waitlist:preference-calculation", "waitlist-preference-calculation"),
    }
    before = {k: _snapshot(sync_redis, prefix, src) for k, (src, _) in names.items()}
    assert set(before["WAITLIST_NOTIFICATION"]["states"]["failed"]) == {"n-fail"}
    assert set(before["PREFERENCE_CALCULATION"]["states"]["paused"]) and set(
        before["WAITLIST_NOTIFICATION"]["states"]["wait"]
    )
    total = sum(len(s["jobs"]) for s in before.values())
    assert total == 12  # 3 timers; 6 notifications (failed, retrying, 2 prioritized, 2 waiting); 3 preference jobs

    # Dry run: counts, no change.
    code, plan, out = _migrate(env, "--dry-run")
    assert code == 0, out
    assert plan["dryRun"] is True and plan["found"] == total and plan["moved"] == 0
    assert {k: _snapshot(sync_redis, prefix, src) for k, (src, _) in names.items()} == before

    code, report, out = _migrate(env)
    assert code == 0, out
    assert report["moved"] == total == report["found"]
    renumbered_by = {q["queue"]: q["renumbered"] for q in report["queues"]}

    after = {k: _snapshot(sync_redis, prefix, dst) for k, (_, dst) in names.items()}
    for key, (src, dst) in names.items():
        assert not any(
            _snapshot(sync_redis, prefix, src)["states"][s]
            for s in ("wait", "paused", "prioritized", "delayed", "failed")
        )
        for job_id, fields in before[key]["jobs"].items():
            new_id = renumbered_by[key].get(job_id, job_id)
            moved = sync_redis.hgetall(f"{prefix}:{dst}:{new_id}")
            expected = dict(fields)
            if "attemptsMade" in expected:
                expected["atm"] = expected.pop("attemptsMade")
            assert moved == expected, (key, job_id)
            assert not sync_redis.exists(f"{prefix}:{src}:{job_id}")
    # Numeric ids that NestJS 6 had already used were renumbered; custom ids never.
    renumbered = renumbered_by["WAITLIST_NOTIFICATION"]
    assert set(renumbered) == {"3", "4"} and set(renumbered.values()) == {"7", "8"}, json.dumps(report)
    assert not renumbered_by["WAITLIST_EXPIRY"] and not renumbered_by["PREFERENCE_CALCULATION"]
    # Delayed jobs keep their exact due time (including the 4.x backoff retry), failed jobs their story.
    for key, job_id in (
        ("WAITLIST_EXPIRY", "expiry_w-1"),
        ("WAITLIST_EXPIRY", "expiry_w-2"),
        ("WAITLIST_EXPIRY", "expiry_w-3"),
        ("WAITLIST_NOTIFICATION", "n-retry"),
    ):
        assert after[key]["states"]["delayed"][job_id] == before[key]["states"]["delayed"][job_id]
    failed = sync_redis.hgetall(f"{prefix}:waitlist-notification:n-fail")
    assert (
        failed["failedReason"] == "whatsapp down"
        and failed["atm"] == "2"
        and len(json.loads(failed["stacktrace"])) == 2
    )
    assert sync_redis.hget(f"{prefix}:waitlist-notification:n-retry", "atm") == "1"

    # Node bullmq 6 sees each job in the state it had.
    view = node_json(
        env,
        "compat/inspect.js",
        "--jobs",
        "WAITLIST_EXPIRY:expiry_w-1,expiry_w-3",
        "--jobs",
        "WAITLIST_NOTIFICATION:n-fail,n-retry",
    )
    assert view["WAITLIST_EXPIRY"]["jobs"]["expiry_w-1"]["state"] == "delayed"
    assert view["WAITLIST_NOTIFICATION"]["jobs"]["n-fail"]["state"] == "failed"
    assert view["WAITLIST_NOTIFICATION"]["jobs"]["n-fail"]["attemptsMade"] == 2
    counts = view["WAITLIST_NOTIFICATION"]["counts"]
    assert (counts["prioritized"], counts["waiting"], counts["delayed"], counts["failed"]) == (
        6,
        2,
        1,
        1,
    )  # 4 from NestJS 6 + 2 moved; 2 waiting; n-retry; n-fail
    assert view["PREFERENCE_CALCULATION"]["counts"]["waiting"] == 2

    # Re-running moves nothing and duplicates nothing.
    code, again, out = _migrate(env)
    assert code == 0 and again["moved"] == 0 and again["found"] == 0, out
    assert {k: _snapshot(sync_redis, prefix, dst) for k, (_, dst) in names.items()} == after

    # The upgraded NestJS app cancels a migrated timer by its id; its next job gets a fresh id.
    assert nest(env, "cancelExpiryTimer", {"waitlistId": "w-1"})["cancelled"] is True
    fresh = nest(env, "sendSlotAvailableNotification", {"waitlistEntry": entry("w-fresh"), "slot": slot})["jobId"]
    assert json.loads(sync_redis.hget(f"{prefix}:waitlist-notification:{fresh}", "data"))["waitlistId"] == "w-fresh"

    # Current-mode Python workers process what was moved.
    worker = start_worker("-q", "waitlist-notification", "-q", "waitlist-preference-calculation")
    async with Producer(settings) as producer:
        moved_waiting = [renumbered.get(i, i) for i in before["WAITLIST_NOTIFICATION"]["states"]["wait"]]
        moved_paused = list(before["PREFERENCE_CALCULATION"]["states"]["paused"])
        for job_id in moved_waiting:
            await wait_job_state(producer.queue(QueueKey.WAITLIST_NOTIFICATION), job_id, "completed")
        for job_id in moved_paused:
            await wait_job_state(producer.queue(QueueKey.PREFERENCE_CALCULATION), job_id, "completed")
    worker.terminate()

    # A custom id that exists on both sides is a conflict: left on the legacy queue, reported, exit 1.
    legacy(env, "notifyWaitlistCustomer", {"waitlistEntry": entry("w-9"), "slot": slot})
    nest(env, "notifyWaitlistCustomer", {"waitlistEntry": entry("w-9"), "slot": slot})
    code, report, out = _migrate(env)
    assert code == 1 and "expiry_w-9" in out and "left on the legacy queue" in out
    assert sync_redis.exists(f"{prefix}:waitlist:expiry:expiry_w-9") and sync_redis.exists(
        f"{prefix}:waitlist-expiry:expiry_w-9"
    )


async def test_migrate_refuses_while_a_legacy_worker_holds_a_job(env, start_node, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    holder = start_node("legacy/worker4.js", "WAITLIST_EXPIRY", "--hold", ready="legacy worker ready")
    legacy(
        env,
        "batch",
        [
            {
                "action": "notifyWaitlistCustomer",
                "args": {"waitlistEntry": seed_entry("w-busy"), "slot": seed_slot(), "delayMs": 0},
            },
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": seed_entry("w-later"), "slot": seed_slot()}},
        ],
    )
    holder.wait_for_log("holding expiry_w-busy")
    code, _, out = _migrate(env)
    assert code == 1
    assert "expiry_w-busy" in out and "stop the legacy workers" in out and "nothing was moved" in out
    assert "Traceback" not in out
    assert sync_redis.zscore(f"{prefix}:waitlist:expiry:delayed", "expiry_w-later") is not None
    assert not sync_redis.exists(f"{prefix}:waitlist-expiry:expiry_w-later")
    code, plan, out = _migrate(env, "--dry-run")
    assert code == 0 and plan["queues"][0]["active"] == ["expiry_w-busy"], out
