"""Redis out of memory (maxmemory reached, noeviction): adds fail with a clear bullwait
error, nothing already queued is lost, a worker survives it and drains the queues once
memory is available again; `bullwait doctor` reports it (fail, with what to do)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis

from bullwait.dev.embedded import RedisServer
from bullwait.errors import BullwaitError, RedisOutOfMemory
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.reliability import COUNTING, add_counted, counts, eventually


@pytest.fixture
def small_redis() -> Any:
    server = RedisServer(extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]).start()
    yield server
    server.cleanup()


async def test_out_of_memory_refuses_adds_and_loses_nothing(
    small_redis: RedisServer, prefix: str, start_worker: Any, env: dict[str, str]
) -> None:
    url = f"{small_redis.url}/0"
    settings = Settings(redis_url=url, bullmq_prefix=prefix)
    acked: set[tuple[QueueKey, str]] = set()
    async with Producer(settings) as producer:
        error: RedisOutOfMemory | None = None
        for i in range(50_000):  # bounded: 4 MB fill up long before this
            try:
                acked.add(await add_counted(producer, i, sleep_ms=0))
            except RedisOutOfMemory as exc:
                error = exc
                break
        assert error is not None, "maxmemory was never reached"
        assert isinstance(error, BullwaitError)
        message = str(error)
        assert "out of memory" in message and "maxmemory" in message and "job not added" in message, message
        assert "jobs already queued are kept" in message and "\n" not in message
        assert len(acked) > 100

        # Later adds fail the same clear way (or succeed, if Redis freed a little memory:
        # expired locks, trimmed event streams), never anything else, never silently.
        refused = 0
        for i in range(60_000, 60_010):
            try:
                acked.add(await add_counted(producer, i, sleep_ms=0))
            except RedisOutOfMemory:
                refused += 1
        assert refused > 0

        # Every acknowledged job is still there.
        queued = {key: (await counts(producer, key)) for key in QueueKey}
        assert sum(c["waiting"] + c["delayed"] + c["prioritized"] for c in queued.values()) == len(acked), queued

        # `bullwait doctor` says so, and what to do; `bullwait stats` still reads the queues.
        ops_env = dict(env, REDIS_URL=url, BULLMQ_PREFIX=prefix)
        doctor = invoke_cli(ops_env, "doctor", "--json")
        assert doctor.returncode == 2, doctor.stdout + doctor.stderr
        memory = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["memory"]
        assert memory["status"] == "fail", memory
        assert "of maxmemory" in memory["detail"], memory
        assert "new jobs will be refused" in memory["detail"] and "raise maxmemory" in memory["detail"], memory
        text = invoke_cli(ops_env, "doctor")
        assert text.returncode == 2 and any(
            line.startswith("fail") and "memory" in line and "raise maxmemory" in line
            for line in text.stdout.splitlines()
        ), text.stdout
        stats = invoke_cli(ops_env, "stats", "--json")
        assert stats.returncode == 0 and "Traceback" not in stats.stderr, stats.stderr

        # A worker started while Redis is full stays up, then drains everything once memory is freed.
        worker = start_worker(extra_env={**COUNTING, "REDIS_URL": url})
        admin = redis.Redis(port=small_redis.port)
        try:
            await asyncio.sleep(1.0)  # it polls a full Redis for a while
            assert worker.proc.poll() is None
            admin.config_set("maxmemory", "0")
        finally:
            admin.close()

        async def drained() -> bool:
            done = 0
            for key in QueueKey:
                done += (await counts(producer, key))["completed"]
            return done == len(acked)

        await eventually(drained, timeout=60, message="all queued jobs completed after memory was freed")
        for key, job_id in list(acked)[:50]:
            assert await producer.queue(key).getJobState(job_id) == "completed"
        final = {key: await counts(producer, key) for key in QueueKey}
        assert all(c["failed"] == 0 for c in final.values()), final
    assert worker.terminate() == 0
    log = worker.log()
    assert "free memory or raise maxmemory" in log, "the worker says what is wrong"
    assert log.count('"worker error"') < 30, "repeated errors are throttled, not one line per retry"


def test_error_throttle_counts_repeats() -> None:
    from bullwait.runtime.runner import ErrorThrottle

    lines: list[dict[str, Any]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append(fields)

    throttle = ErrorThrottle(every=3600)
    for _ in range(100):
        throttle.log(Log(), "q1", RuntimeError("boom"))
    throttle.log(Log(), "q2", RuntimeError("boom"))
    throttle.log(Log(), "q1", RuntimeError("other"))
    assert [(f["queue"], f["error"]) for f in lines] == [("q1", "boom"), ("q2", "boom"), ("q1", "other")]
    throttle.every = 0
    throttle.log(Log(), "q1", RuntimeError("boom"))
    assert lines[-1]["repeated"] == 99
