"""Poison job hashes (items 2 and 3): whatever a producer or a hand-written HSET left
in a job hash, the job fails once with a reason naming what is wrong, never stalls, harms no
other job, and the CLI can list, show and remove it.

Jobs are written here as bullmq's addStandardJob writes them (job hash, LPUSH on the wait
list, the wake-up marker), with bytes where a field is meant to be invalid.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.jobdata import expiry_data
from helpers.reliability import COUNTING, eventually
from helpers.reliability_processors import counter_field, keys

QUEUE = "waitlist-expiry"
NAME = "check-expiry"
FAILING = json.dumps(dict(expiry_data(), failAlways=True)).encode()
INVALID = json.dumps({k: v for k, v in expiry_data().items() if k != "customerId"}).encode()

# (job id, fields over a good job, words the failedReason must hold, attempts made in the end)
CASES: list[tuple[bytes, dict[str, bytes], list[str], int]] = [
    (
        b"inf-attempts",
        {"data": INVALID, "opts": b'{"attempts":1e400}'},
        ["Invalid job data", "customerId", "opts.attempts", "not finite"],
        1,
    ),
    (b"huge-attempts", {"data": INVALID, "opts": b'{"attempts":100000000000000000000000}'}, ["customerId"], 1),
    (b"str-attempts", {"data": FAILING, "opts": b'{"attempts":"3"}'}, ["asked to fail"], 3),  # "3" means 3, as in Node
    (b"abc-attempts", {"data": FAILING, "opts": b'{"attempts":"abc"}'}, ["opts.attempts is 'abc'", "asked to fail"], 1),
    (b"null-attempts", {"data": FAILING, "opts": b'{"attempts":null}'}, ["opts.attempts is null", "asked to fail"], 1),
    (
        b"abc-backoff",
        {"data": FAILING, "opts": b'{"attempts":3,"backoff":{"type":"fixed","delay":"x"}}'},
        ["opts.backoff"],
        1,
    ),
    (b"abc-timestamp", {"timestamp": b"abc"}, ["timestamp is 'abc'"], 1),
    (b"abc-delay", {"delay": b"abc"}, ["delay is 'abc'"], 1),
    (b"abc-priority", {"priority": b"abc"}, ["priority is 'abc'"], 1),
    (b"abc-atm", {"atm": b"abc"}, ["atm is 'abc'"], 1),
    (b"array-opts", {"opts": b'[{"attempts":3}]'}, ["opts is an array, not a JSON object"], 1),
    (b"bad-utf8-data", {"data": b'{"waitlistId":"w-\xff\xfe"}'}, ["data is not valid UTF-8"], 1),
    (b"bad-utf8-name", {"name": b"check-expiry\xff"}, ["name is not valid UTF-8"], 1),
    (b"bad-utf8-id-\xff\xfe", {}, ["id is not valid UTF-8"], 1),
    # Options bullmq-py reads while building the Job, which keeping `opts` does not fix.
    (b"str-parent", {"opts": b'{"parent":"x"}'}, ["Invalid job data"], 1),
    (
        b"both-parent-flags",
        {"opts": b'{"failParentOnFailure":true,"continueParentOnFailure":true}'},
        ["Invalid job data"],
        1,
    ),
]


def job_key(prefix: str, job_id: bytes) -> bytes:
    return f"{prefix}:{QUEUE}:".encode() + job_id


def write_job(raw: redis.Redis, prefix: str, job_id: bytes, fields: dict[str, bytes]) -> None:
    """A job as addStandardJob-9.lua stores it, with `fields` over a good one."""
    base = f"{prefix}:{QUEUE}:"
    job = {
        "name": NAME.encode(),
        "data": json.dumps(expiry_data()).encode(),
        "opts": b'{"attempts":1}',
        "timestamp": str(int(time.time() * 1000)).encode(),
        "delay": b"0",
        "priority": b"0",
    }
    job.update(fields)
    raw.hset(job_key(prefix, job_id), mapping=job)  # type: ignore[arg-type]
    raw.lpush(base + "wait", job_id)
    raw.zadd(base + "marker", {"0": 0})


@pytest.fixture
def raw_redis(redis_server: Any) -> Any:
    client = redis.Redis(port=redis_server.port, decode_responses=False)
    yield client
    client.close()


def failed_ids(raw: redis.Redis, prefix: str) -> set[bytes]:
    return set(raw.zrange(f"{prefix}:{QUEUE}:failed", 0, -1))


async def test_each_poison_job_fails_once_naming_the_problem(
    start_worker: Any, raw_redis: redis.Redis, prefix: str, env: dict[str, str]
) -> None:
    for job_id, fields, _words, _atm in CASES:
        write_job(raw_redis, prefix, job_id, fields)
    worker = start_worker("--queue", "expiry", extra_env=COUNTING)
    wanted = {job_id for job_id, *_ in CASES}

    async def all_failed() -> bool:
        return wanted <= failed_ids(raw_redis, prefix)

    await eventually(all_failed, timeout=25, message="every poison job failed")
    for job_id, _fields, words, atm in CASES:
        stored = raw_redis.hgetall(job_key(prefix, job_id))
        reason = stored.get(b"failedReason", b"").decode()  # UTF-8, whatever the job held
        for word in words:
            assert word in reason, (job_id, word, reason)
        assert "\n" not in reason
        assert stored.get(b"atm") == str(atm).encode(), (job_id, stored.get(b"atm"), reason)
        assert stored.get(b"stc") in (None, b"0"), (job_id, "stalled", stored.get(b"stc"))
    base = f"{prefix}:{QUEUE}:"
    assert raw_redis.llen(base + "active") == 0
    assert raw_redis.llen(base + "wait") == 0
    starts = raw_redis.hgetall(keys(prefix)["starts"])
    assert starts.get(counter_field(QueueKey.WAITLIST_EXPIRY, "str-attempts").encode()) == b"3"
    # What the job carried, including its bad bytes, is still there.
    assert raw_redis.hget(job_key(prefix, b"bad-utf8-data"), "data") == b'{"waitlistId":"w-\xff\xfe"}'
    assert raw_redis.hget(job_key(prefix, b"abc-delay"), "delay") == b"abc"
    log = worker.log()
    assert "Traceback" not in log
    assert "job stalled" not in log
    assert log.count('"job failed"') >= len(CASES), "each poison job is logged"
    assert "bad-utf8-id-\\\\xff\\\\xfe" in log, "an undecodable id is logged escaped"

    # The CLI lists, shows and removes them, no traceback.
    listed = invoke_cli(env, "jobs", "list", QUEUE, "--status", "failed", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    assert "bad-utf8-id-\\xff\\xfe" in listed.stdout
    as_json = invoke_cli(env, "jobs", "list", QUEUE, "--status", "failed", "--json", "--limit", "50")
    assert as_json.returncode == 0, as_json.stderr
    assert len(json.loads(as_json.stdout)) == len(CASES)
    for shown_id in ("bad-utf8-id-\\xff\\xfe", "bad-utf8-data", "bad-utf8-name", "array-opts", "abc-delay"):
        show = invoke_cli(env, "jobs", "show", QUEUE, shown_id)
        assert show.returncode == 0, (shown_id, show.stdout, show.stderr)
        assert "failed" in show.stdout
    stats = invoke_cli(env, "stats")
    assert stats.returncode == 0, stats.stderr
    cleaned = invoke_cli(env, "clean", "--queue", QUEUE, "--status", "failed", "--grace", "0", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)[0]["removed"] == len(CASES)
    assert not failed_ids(raw_redis, prefix)
    for result in (listed, as_json, stats, cleaned):  # (--json output holds the jobs' stack traces)
        assert "Traceback" not in result.stderr
    assert worker.terminate() == 0


async def test_a_waiting_poison_job_can_be_listed_shown_and_cancelled(
    raw_redis: redis.Redis, prefix: str, env: dict[str, str]
) -> None:
    """No worker: the bad jobs wait, and an operator removes them."""
    write_job(raw_redis, prefix, b"bad-\xff", {"data": b"\xff\xfe", "name": b"\xc3("})
    write_job(raw_redis, prefix, b"array-opts", {"opts": b"[1]", "delay": b"abc", "atm": b"x"})
    for status in ("wait", "waiting"):
        listed = invoke_cli(env, "jobs", "list", QUEUE, "--status", status)
        assert listed.returncode == 0, listed.stderr
        assert "bad-\\xff" in listed.stdout and "array-opts" in listed.stdout
    stats = invoke_cli(env, "stats", "--json")  # the oldest waiting job is a bad one
    assert stats.returncode == 0, stats.stderr
    assert {q["name"]: q["waiting"] for q in json.loads(stats.stdout)}[QUEUE] == 2
    show = invoke_cli(env, "jobs", "show", QUEUE, "bad-\\xff")
    assert show.returncode == 0, show.stderr
    assert "\\xff\\xfe" in show.stdout and "not valid UTF-8" in show.stdout
    shown_json = invoke_cli(env, "jobs", "show", QUEUE, "bad-\\xff", "--json")
    assert shown_json.returncode == 0, shown_json.stderr
    assert json.loads(shown_json.stdout)["id"] == "bad-\\xff"
    for job_id in ("bad-\\xff", "array-opts"):
        cancelled = invoke_cli(env, "cancel", "--queue", QUEUE, "--job", job_id)
        assert cancelled.returncode == 0, (job_id, cancelled.stdout, cancelled.stderr)
        assert "Traceback" not in cancelled.stdout + cancelled.stderr
    assert raw_redis.llen(f"{prefix}:{QUEUE}:wait") == 0
    assert not raw_redis.exists(job_key(prefix, b"bad-\xff"))
    for result in (listed, stats, show, shown_json):
        assert "Traceback" not in result.stdout + result.stderr


async def test_one_undecodable_job_among_many_delays_no_other(
    settings: Settings, start_worker: Any, raw_redis: redis.Redis, prefix: str
) -> None:
    """The bad job is fetched by a completion on the shared auto-pipeline connection: every
    other job still completes without stalling (a broken reply used to fail its neighbours)."""
    good = 1500
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        opts = {"removeOnComplete": False, "removeOnFail": False}
        await queue.addBulk([{"name": NAME, "data": expiry_data(f"w-{i}"), "opts": opts} for i in range(good // 2)])
        write_job(raw_redis, prefix, b"among-many-\xff", {"name": b"check\xff", "data": b'{"x":"\xff"}'})
        await queue.addBulk([{"name": NAME, "data": expiry_data(f"v-{i}"), "opts": opts} for i in range(good // 2)])
        worker = start_worker("--queue", "expiry", extra_env=COUNTING)
        base = f"{prefix}:{QUEUE}:"

        async def good_done() -> bool:
            return raw_redis.zcard(base + "completed") == good

        await eventually(good_done, timeout=20, message="every good job completed")

        async def bad_failed() -> bool:
            return failed_ids(raw_redis, prefix) == {b"among-many-\xff"}

        await eventually(bad_failed, timeout=10, message="the undecodable job failed")
        completed = raw_redis.zrange(base + "completed", 0, -1)
        pipe = raw_redis.pipeline(transaction=False)
        for job_id in completed:
            pipe.hget(base.encode() + job_id, "stc")
        stalled = [j for j, stc in zip(completed, pipe.execute()) if stc not in (None, b"0")]
        assert stalled == [], f"{len(stalled)} good jobs stalled"
        assert raw_redis.hlen(keys(prefix)["starts"]) == good  # every good job ran, once
        assert set(raw_redis.hvals(keys(prefix)["starts"])) == {b"1"}
        log = worker.log()
        assert "job stalled" not in log and "Traceback" not in log
        assert worker.terminate() == 0
