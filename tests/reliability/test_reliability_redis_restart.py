"""Redis restarted under load (AOF on): workers reconnect by themselves, every job whose
add was acknowledged is still there and completes; the producer either succeeds once Redis
is back or raises a bullwait error, never drops a job silently."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.errors import BullwaitError, RedisUnavailable
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer

from helpers.jobdata import notification_data
from helpers.reliability import FAST_RECOVERY, add_counted, counts, eventually
from helpers.reliability_processors import keys


def _server(tmp_path: Path, port: int) -> RedisServer:
    # appendfsync always: an acknowledged write is on disk even if Redis is SIGKILLed.
    (tmp_path / "redis").mkdir(exist_ok=True)
    return RedisServer(
        port=port, data_dir=str(tmp_path / "redis"), appendonly=True, extra_args=["--appendfsync", "always"]
    )


async def _add_one(producer: Producer, i: int) -> tuple[QueueKey, str]:
    return await add_counted(producer, i, sleep_ms=5)


@pytest.mark.parametrize("how", ["sigkill", "shutdown"])
async def test_redis_restart_under_load(
    tmp_path: Path, env: dict[str, str], prefix: str, start_worker: Any, how: str
) -> None:
    port = free_port()
    server = _server(tmp_path, port).start()
    url = f"redis://127.0.0.1:{port}/0"
    extra = {
        **FAST_RECOVERY,
        "REDIS_URL": url,
        "PREFERENCE_CALCULATION_CONCURRENCY": "10",
        "BULLWAIT_MAX_STALLED_COUNT": "5",
    }
    try:
        worker = start_worker(extra_env=extra)
        settings = Settings(redis_url=url, bullmq_prefix=prefix, bullwait_redis_retry_timeout=15)
        acked: set[tuple[QueueKey, str]] = set()
        refused: list[str] = []
        unexpected: list[BaseException] = []
        async with Producer(settings) as producer:
            for i in range(300):  # a backlog the worker is busy with when Redis goes down
                key, job_id = await _add_one(producer, i)
                acked.add((key, job_id))

            async def keep_adding(start: int, stop: asyncio.Event) -> None:
                i = start
                while not stop.is_set():
                    try:
                        key, job_id = await _add_one(producer, i)
                        acked.add((key, job_id))
                    except RedisUnavailable as exc:
                        refused.append(str(exc))
                    except BaseException as exc:  # anything else is a silent-drop risk
                        unexpected.append(exc)
                    i += 1
                    await asyncio.sleep(0.005)

            stop = asyncio.Event()
            adder = asyncio.ensure_future(keep_adding(1000, stop))
            await asyncio.sleep(0.3)
            if how == "sigkill":
                server.kill()
            else:
                await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.5)
            server = _server(tmp_path, port).start()
            await asyncio.sleep(1.0)
            stop.set()
            await adder
            assert not unexpected, unexpected
            assert worker.proc.poll() is None, "the worker must survive the restart"

            async def all_acked_completed() -> bool:
                total = 0
                for key in QueueKey:
                    total += (await counts(producer, key))["completed"]
                return total >= len(acked)

            try:
                await eventually(all_acked_completed, timeout=60, message="every acknowledged job completed")
            except AssertionError:
                final = {key.value: await counts(producer, key) for key in QueueKey}
                worker.proc.send_signal(signal.SIGUSR1)  # the test plugin dumps the worker's asyncio tasks
                await asyncio.sleep(1.0)
                notable = [line for line in worker.log().splitlines() if "job completed" not in line]
                raise AssertionError(
                    f"acked {len(acked)}, refused {len(refused)}; counts {final}; alive {worker.proc.poll() is None}\n"
                    + "\n".join(notable[-400:])
                ) from None
            client = redis.Redis(port=port, decode_responses=True)
            try:
                effects = client.hgetall(keys(prefix)["effects"])
                states = {}
                for key, job_id in acked:
                    states[(key, job_id)] = await producer.queue(key).getJobState(job_id)
            finally:
                client.close()
            missing = [j for j, s in states.items() if s != "completed"]
            assert not missing, f"{len(missing)} acknowledged jobs not completed: {missing[:5]}"
            assert all(int(effects.get(f"{key.value}:{j}", 0)) >= 1 for key, j in acked)
            final = {key: await counts(producer, key) for key in QueueKey}
            # An add that raised may still have reached Redis (its reply was lost): bounded by `refused`.
            # An add retried after a lost reply adds nothing twice (the producer sets job ids).
            assert len(acked) <= sum(c["completed"] for c in final.values()) <= len(acked) + len(refused), final
            assert all(c["failed"] == c["active"] == c["waiting"] == 0 for c in final.values()), final

            # Processing goes on after the restart, on the same worker process.
            _, after = await _add_one(producer, 99_999)
            await eventually(
                lambda: _is_completed(producer, QueueKey.WAITLIST_NOTIFICATION, after),
                timeout=30,
                message="post-restart job",
            )
        assert worker.terminate() == 0
    finally:
        server.cleanup()


async def _is_completed(producer: Producer, key: QueueKey, job_id: str) -> bool:
    return await producer.queue(key).getJobState(job_id) == "completed"


async def test_producer_add_during_outage_succeeds_after_or_raises(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    server = _server(tmp_path, port).start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        patient = Settings(redis_url=url, bullmq_prefix=prefix, bullwait_redis_retry_timeout=20)
        impatient = Settings(redis_url=url, bullmq_prefix=prefix, bullwait_redis_retry_timeout=0.5)
        async with Producer(patient) as slow, Producer(impatient) as fast:
            for producer in (slow, fast):  # connected before the outage
                await producer.send_slot_available(NotificationJob.model_validate(notification_data("warm-up")))
            server.kill()
            with pytest.raises(RedisUnavailable) as info:
                await fast.send_slot_available(NotificationJob.model_validate(notification_data("during-outage")))
            message = str(info.value)
            assert "job not added" in message and "BULLWAIT_REDIS_RETRY_TIMEOUT" in message and "\n" not in message
            assert isinstance(info.value, BullwaitError)

            pending = asyncio.ensure_future(
                slow.send_slot_available(NotificationJob.model_validate(notification_data("retried")))
            )
            await asyncio.sleep(1.0)
            assert not pending.done(), "the patient producer keeps retrying while Redis is down"
            server = _server(tmp_path, port).start()
            job_id = await asyncio.wait_for(pending, 30)
            job = await slow.queue(QueueKey.WAITLIST_NOTIFICATION).getJob(job_id)
            assert job is not None and job.data["waitlistId"] == "retried"
    finally:
        server.cleanup()
