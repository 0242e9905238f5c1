"""`bullwait worker` as a real subprocess, and the worker pool in-process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis

from bullwait.runtime.dispatch import Registry
from bullwait.runtime.runner import run_workers
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import ExpiryJob
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.common import wait_job_state, wait_until
from helpers.jobdata import expiry_data, notification_data, preference_data


def _job(sync_redis: redis.Redis, prefix: str, queue: str, job_id: str) -> dict[str, str]:
    return sync_redis.hgetall(f"{prefix}:{queue}:{job_id}")


async def test_seed_jobs_with_seed_options_are_processed(settings: Settings, start_worker, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    async with Producer(settings) as producer:
        # Exactly what the NestJS module's NestJS snippets add (data and options), through raw bullmq.
        exp = await producer.queue(QueueKey.WAITLIST_EXPIRY).add(
            "check-expiry", expiry_data("w-9", minutes=0.01), {"delay": 600, "jobId": "expiry_w-9"}
        )
        note = await producer.queue(QueueKey.WAITLIST_NOTIFICATION).add(
            "send-slot-available", notification_data(), {"priority": 10, "attempts": 3}
        )
        pref = await producer.queue(QueueKey.PREFERENCE_CALCULATION).add(
            "calculate-preferences", preference_data(), {"priority": 1}
        )
        for queue, job in (
            (QueueKey.WAITLIST_EXPIRY, exp),
            (QueueKey.WAITLIST_NOTIFICATION, note),
            (QueueKey.PREFERENCE_CALCULATION, pref),
        ):
            q = producer.queue(queue)
            await wait_job_state(q, job.id, "completed")
    assert worker.terminate() == 0
    log = worker.log()
    assert "job completed" in log and "expiry_w-9" in log
    assert "+34600111222" not in log, "phone numbers must be masked in logs"


async def test_invalid_data_fails_once_and_keeps_data(settings: Settings, start_worker, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    start_worker("--queue", "waitlist-notification")
    bad = dict(notification_data(), customerPhone="not a phone")
    del bad["salonId"]
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
        job = await queue.add("send-slot-available", bad, {"attempts": 3, "backoff": {"type": "fixed", "delay": 10}})
        await wait_job_state(queue, job.id, "failed")
        stored = await queue.getJob(job.id)
    assert stored.attemptsMade == 1
    assert stored.failedReason.startswith("Invalid job data:")
    assert "customerPhone" in stored.failedReason and "salonId" in stored.failedReason
    assert stored.data == bad


async def test_undecodable_data_fails_once(settings: Settings, start_worker, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    start_worker("--queue", "waitlist-expiry")
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        job = await queue.add("check-expiry", expiry_data(), {"attempts": 3})
        # A producer in another runtime wrote something that is not JSON.
        # (Added while no worker could take it: the worker serves only this queue and
        # takes it at once, so write the broken data into a job added as delayed.)
    key = f"{prefix}:waitlist-expiry:{job.id}"
    wait_until(lambda: sync_redis.hget(key, "finishedOn"), message="first job done")
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        job2 = await queue.add("check-expiry", expiry_data("w-2"), {"attempts": 3, "delay": 1500})
        sync_redis.hset(f"{prefix}:waitlist-expiry:{job2.id}", "data", "{not json")
        await wait_job_state(queue, job2.id, "failed")
    stored = sync_redis.hgetall(f"{prefix}:waitlist-expiry:{job2.id}")
    assert stored["failedReason"].startswith("Invalid job data: data is not valid JSON")
    assert stored["data"] == "{not json"
    assert stored.get("atm") == "1" or stored.get("attemptsMade") == "1"


async def test_unknown_job_name_fails_visibly(settings: Settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    start_worker("--queue", "waitlist-expiry")
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        job = await queue.add("check-expiry-v2", expiry_data(), {"attempts": 3})
        await wait_job_state(queue, job.id, "failed")
        stored = await queue.getJob(job.id)
    assert "No processor for job name 'check-expiry-v2'" in stored.failedReason
    assert stored.attemptsMade == 1


async def test_graceful_shutdown_finishes_active_job(settings: Settings) -> None:
    registry = Registry()
    started = asyncio.Event()

    async def slow(payload: ExpiryJob, ctx: Any) -> str:
        started.set()
        await asyncio.sleep(1.0)
        return "finished"

    registry.register(QueueKey.WAITLIST_EXPIRY, "check-expiry", ExpiryJob, slow)
    stop = asyncio.Event()
    async with Producer(settings) as producer:
        job_id = await producer.schedule_expiry(ExpiryJob.model_validate(expiry_data("slow")), delay_ms=0)
        task = asyncio.ensure_future(
            run_workers(settings, registry, [QueueKey.WAITLIST_EXPIRY], shutdown_timeout=10, stop=stop)
        )
        await asyncio.wait_for(started.wait(), 10)
        stop.set()  # what SIGTERM does
        assert await asyncio.wait_for(task, 15) == 0
        queue = producer.queue(QueueKey.WAITLIST_EXPIRY)
        assert await queue.getJobState(job_id) == "completed"
        assert (await queue.getJob(job_id)).returnvalue == "finished"


def test_sigterm_exits_zero(start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    assert worker.terminate(timeout=20) == 0
    assert "stopped" in worker.log()


def test_worker_waits_for_redis_and_logs_each_attempt(env: dict[str, str], start_worker) -> None:  # type: ignore[no-untyped-def]
    from bullwait.dev.embedded import free_port

    worker = start_worker(extra_env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, ready=False)
    worker.wait_for_log("redis unreachable, retrying", count=2, timeout=20)
    assert worker.proc.poll() is None, "the worker must keep retrying"
    assert worker.terminate(timeout=20) == 0
    first = next(line for line in worker.log().splitlines() if "redis unreachable" in line)
    assert json.loads(first)["error"].startswith("cannot reach Redis")


def test_unknown_queue_is_refused(env: dict[str, str]) -> None:
    result = invoke_cli(env, "worker", "--queue", "waitlist-nope")
    assert result.returncode == 2
    assert "unknown queue 'waitlist-nope'" in result.stderr and "Traceback" not in result.stderr


def test_a_task_that_ignores_cancellation_does_not_keep_the_process_alive() -> None:
    """bullmq's Worker.close ignores cancellation while its teardown waits; asyncio.run
    would wait for such a task forever at exit, `run_until_done` gives it a bounded time."""
    import subprocess
    import sys

    code = """
import asyncio
from bullwait.runtime.runner import run_until_done

async def stubborn():
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            continue

async def main():
    asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    return 7

print(run_until_done(main(), cleanup_timeout=0.2))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "7", done.stderr[-2000:]
