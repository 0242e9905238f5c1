"""A worker SIGKILLed mid-job: its jobs are recovered as stalled by another worker (a
second `bullwait worker`, or a Node bullmq 6 Worker) and run to the end exactly once after
recovery (side effects counted in Redis)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import redis
from bullmq import Job

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer

from helpers.common import wait_until
from helpers.jobdata import notification_data
from helpers.nodecompat import HAVE_NODE, SKIP_REASON, start_node  # noqa: F401 (fixture)
from helpers.reliability import FAST_RECOVERY, counts, eventually
from helpers.reliability_processors import counter_field, keys


def _counts(sync_redis: redis.Redis, prefix: str, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in sync_redis.hgetall(keys(prefix)[name]).items()}


async def _kill_mid_jobs(
    producer: Producer, worker: Any, sync_redis: redis.Redis, prefix: str, tag: str, count: int, sleep_ms: int
) -> list[str]:
    """Add `count` slow notifications, wait until `worker` started all of them, SIGKILL it."""
    ids = []
    for i in range(count):
        data = dict(notification_data(f"{tag}-{i}"), sleepMs=sleep_ms)
        ids.append(await producer.send_slot_available(NotificationJob.model_validate(data)))
    wait_until(lambda: len(_counts(sync_redis, prefix, "starts")) == len(ids), message="all jobs started")
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    assert _counts(sync_redis, prefix, "effects") == {}, "the killed worker finished nothing"
    return ids


async def _all_completed(producer: Producer, ids: list[str], by: str) -> None:
    async def done() -> bool:
        return (await counts(producer, QueueKey.WAITLIST_NOTIFICATION))["completed"] == len(ids)

    await eventually(done, timeout=30, message=f"recovered jobs completed by {by}")
    final = await counts(producer, QueueKey.WAITLIST_NOTIFICATION)
    assert final["active"] == final["failed"] == final["waiting"] == 0, final


async def test_sigkilled_worker_jobs_are_recovered_and_completed_once(
    settings: Settings, start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    first = start_worker("-q", "waitlist-notification", extra_env=FAST_RECOVERY)
    async with Producer(settings) as producer:
        # Concurrency is 10: all eight are active on the first worker.
        ids = await _kill_mid_jobs(producer, first, sync_redis, prefix, "w", 8, sleep_ms=2500)
        second = start_worker("-q", "waitlist-notification", extra_env=FAST_RECOVERY)
        await _all_completed(producer, ids, "the second worker")

    starts = _counts(sync_redis, prefix, "starts")
    effects = _counts(sync_redis, prefix, "effects")
    by = _counts(sync_redis, prefix, "by")
    fields = [counter_field(QueueKey.WAITLIST_NOTIFICATION, job_id) for job_id in ids]
    assert starts == {f: 2 for f in fields}, "started by the killed worker, then once more"
    assert effects == {f: 1 for f in fields}, "ran to completion exactly once"
    assert set(by.values()) == {second.proc.pid}
    for job_id in ids:
        stored = sync_redis.hgetall(f"{prefix}:waitlist-notification:{job_id}")
        assert stored.get("stc") == "1", stored  # BullMQ's stalled counter: recovered once
    assert second.log().count('"job stalled"') == len(ids)
    assert second.terminate() == 0


async def test_sigkilled_python_worker_jobs_are_recovered_by_a_node_worker(
    settings: Settings, start_worker: Any, start_node: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    if not HAVE_NODE:
        pytest.skip(SKIP_REASON)
    first = start_worker("-q", "waitlist-notification", extra_env=FAST_RECOVERY)
    async with Producer(settings) as producer:
        ids = await _kill_mid_jobs(producer, first, sync_redis, prefix, "n", 6, sleep_ms=3000)
        # A Node bullmq 6 Worker, short stalledInterval: it finds the dead worker's jobs once
        # their 1.5 s lock expires, moves them back to wait and runs them.
        node = start_node(
            "compat/worker.js",
            "WAITLIST_NOTIFICATION",
            "--record",
            "--stalled-interval",
            "500",
            ready="node worker ready",
        )
        await _all_completed(producer, ids, "Node")
        queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
        for job_id in ids:
            job = await Job.fromId(queue, job_id)
            assert job.returnvalue["by"] == "node" and job.returnvalue["id"] == job_id, job.returnvalue
    assert node.stop() == 0

    fields = [counter_field(QueueKey.WAITLIST_NOTIFICATION, job_id) for job_id in ids]
    assert _counts(sync_redis, prefix, "starts") == {f: 1 for f in fields}, "Python started each once, then died"
    assert _counts(sync_redis, prefix, "effects") == {}, "no Python run finished"
    processed = sync_redis.lrange(f"{prefix}:compat:node-processed", 0, -1)
    assert sorted(processed) == sorted(ids), "Node ran each recovered job exactly once"
    for job_id in ids:
        stored = sync_redis.hgetall(f"{prefix}:waitlist-notification:{job_id}")
        assert stored.get("stc") == "1", stored  # BullMQ's stalled counter: recovered once
        assert stored.get("ats") == "2", stored  # started by Python, then by Node
    assert node.log().count("node job stalled") == len(ids)
