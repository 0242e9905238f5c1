"""Bad job data written by a producer in another runtime: each job fails once with a reason
naming the problem, is never retried, and the worker goes on processing good jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.jobdata import expiry_data, notification_data, preference_data
from helpers.reliability import COUNTING, counts, eventually
from helpers.reliability_processors import counter_field, keys

PAST_DAY = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()


def _without(data: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != field}


# (queue, raw `data` field as a producer wrote it, words the failedReason must contain)
CASES: list[tuple[str, str, str, list[str]]] = [
    ("not-json", "waitlist-notification", "{not json", ["data is not valid JSON"]),
    ("deep-nesting", "waitlist-notification", "[" * 100_000 + "]" * 100_000, ["data is nested too deeply"]),
    ("array", "waitlist-notification", json.dumps([notification_data()]), ["expected a JSON object, got an array"]),
    ("string", "waitlist-expiry", json.dumps("expiry"), ["expected a JSON object, got a string"]),
    ("null", "waitlist-expiry", "null", ["expected a JSON object, got null"]),
    ("number", "waitlist-preference-calculation", "42", ["expected a JSON object, got a number"]),
    (
        "too-large",
        "waitlist-notification",
        json.dumps(dict(notification_data(), note="x" * 70_000)),
        ["bytes, more than the 65536 allowed"],
    ),
    (
        "missing",
        "waitlist-notification",
        json.dumps(_without(notification_data(), "customerPhone")),
        ["customerPhone", "Field required"],
    ),
    (
        "wrong-type",
        "waitlist-preference-calculation",
        json.dumps(
            dict(preference_data(), data={"serviceId": "s", "masterId": "m", "dayOfWeek": "monday", "hour": 10})
        ),
        ["data.dayOfWeek"],
    ),
    (
        "not-e164",
        "waitlist-notification",
        json.dumps(dict(notification_data(), customerPhone="600 111 222")),
        ["customerPhone", "E.164"],
    ),
    (
        "past-slot",
        "waitlist-notification",
        json.dumps(dict(notification_data(), slotDetails=dict(notification_data()["slotDetails"], date=PAST_DAY))),
        ["slotDetails.date", "in the past"],
    ),
    ("bad-date", "waitlist-expiry", json.dumps(dict(expiry_data(), expiresAt="tomorrow at ten")), ["expiresAt"]),
]
KEY_OF = {
    "waitlist-expiry": QueueKey.WAITLIST_EXPIRY,
    "waitlist-notification": QueueKey.WAITLIST_NOTIFICATION,
    "waitlist-preference-calculation": QueueKey.PREFERENCE_CALCULATION,
}
JOB_OF = {
    "waitlist-expiry": "check-expiry",
    "waitlist-notification": "send-slot-available",
    "waitlist-preference-calculation": "calculate-preferences",
}
GOOD = {
    "waitlist-expiry": expiry_data,
    "waitlist-notification": notification_data,
    "waitlist-preference-calculation": preference_data,
}


async def test_bad_data_fails_once_and_worker_keeps_going(
    settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    async with Producer(settings) as producer:
        bad: dict[str, tuple[str, str, list[str]]] = {}
        for case, queue, raw, words in CASES:
            # Added through bullmq like any producer (with retries allowed), then the data
            # is overwritten with what a faulty producer in another runtime could write.
            job = await producer.queue(KEY_OF[queue]).add(
                JOB_OF[queue], GOOD[queue](), {"attempts": 3, "backoff": {"type": "fixed", "delay": 10}}
            )
            sync_redis.hset(f"{prefix}:{queue}:{job.id}", "data", raw)
            bad[case] = (queue, str(job.id), words)
        # One undecodable `opts` too.
        job = await producer.queue(QueueKey.WAITLIST_EXPIRY).add("check-expiry", expiry_data(), {"attempts": 3})
        sync_redis.hset(f"{prefix}:waitlist-expiry:{job.id}", "opts", "{attempts: 3")
        bad["bad-opts"] = ("waitlist-expiry", str(job.id), ["opts is not valid JSON"])

        worker = start_worker(extra_env=COUNTING)
        total_bad = len(bad)

        async def all_failed() -> bool:
            failed = 0
            for key in QueueKey:
                failed += (await counts(producer, key))["failed"]
            return failed == total_bad

        await eventually(all_failed, timeout=30, message="every bad job failed")

        for case, (queue, job_id, words) in bad.items():
            stored = sync_redis.hgetall(f"{prefix}:{queue}:{job_id}")
            reason = stored.get("failedReason", "")
            assert reason.startswith("Invalid job data:"), (case, reason)
            for word in words:
                assert word in reason, (case, word, reason)
            assert "\n" not in reason
            assert stored.get("atm") == "1", (case, stored.get("atm"))  # one attempt, never retried
            assert not sync_redis.hget(keys(prefix)["starts"], counter_field(KEY_OF[queue], job_id)), case
        assert sync_redis.hlen(keys(prefix)["starts"]) == 0, "no processor ran for bad data"

        # The same worker process, still alive, processes good jobs afterwards.
        assert worker.proc.poll() is None
        good_ids = []
        for queue, make in GOOD.items():
            good_ids.append((queue, str((await producer.queue(KEY_OF[queue]).add(JOB_OF[queue], make(), {})).id)))

        async def good_done() -> bool:
            states = [await producer.queue(KEY_OF[q]).getJobState(j) for q, j in good_ids]
            return states == ["completed"] * len(good_ids)

        await eventually(good_done, timeout=30, message="good jobs completed after the bad ones")
        for key in QueueKey:
            c = await counts(producer, key)
            assert c["active"] == c["waiting"] == c["delayed"] == 0, (key, c)
    assert "Traceback" not in worker.log()
    assert worker.terminate() == 0


@pytest.mark.parametrize(
    "args,words",
    [
        (["worker", "--queue", "waitlist-nope"], ["unknown queue 'waitlist-nope'"]),
        (["worker", "-q", "expiry", "-q", ""], ["unknown queue ''"]),
        (["worker", "--shutdown-timeout", "-5"], ["--shutdown-timeout"]),
        (["worker", "--shutdown-timeout", "soon"], ["--shutdown-timeout"]),
        (["worker", "--redis-url", "http://localhost:6379"], ["REDIS_URL", "redis://"]),
        (["demo", "--customers", "0"], ["--customers"]),
        (["demo", "--customers", "-3"], ["--customers"]),
        (["demo", "--timer-ms", "-1"], ["--timer-ms"]),
        (["demo", "--timeout", "0"], ["--timeout"]),
        (["demo", "--embedded-redis", "sometimes"], ["--embedded-redis"]),
        (["catalog", "--yaml"], ["--yaml"]),
        (["no-such-command"], ["no-such-command"]),
    ],
)
def test_bad_cli_arguments_fail_clearly(env: dict[str, str], args: list[str], words: list[str]) -> None:
    result = invoke_cli(env, *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in result.stderr, (word, result.stderr)
