"""bullwait's Python producer -> a Node bullmq 6 Worker, and both runtimes' workers on one queue."""

from __future__ import annotations

import json
from typing import Any

from bullmq import Job

from bullwait.settings import Settings
from bullwait.waitlist.catalog import Priority, QueueKey
from bullwait.waitlist.payloads import NotificationJob, PreferenceJob
from bullwait.waitlist.producer import Producer, expiry_job_id, new_expiry

from helpers.jobdata import notification_data, preference_data
from helpers.nodecompat import node_required, start_node  # noqa: F401 (fixture)
from helpers.reliability import eventually

pytestmark = node_required


async def _finished(queue: Any, job_id: str) -> Any:
    async def check() -> Any:
        state = await queue.getJobState(job_id)
        return state if state in ("completed", "failed") else None

    await eventually(check, 60, interval=0.1, message=f"job {job_id} finished")
    return await Job.fromId(queue, job_id)


async def test_python_jobs_arrive_intact_in_a_node_worker(settings: Settings, start_node) -> None:  # type: ignore[no-untyped-def]
    async with Producer(settings) as producer:
        expiry = new_expiry("w-5", "slot-5", "cust-5", "salon-5", delay_ms=300)
        exp_id = await producer.schedule_expiry(expiry, delay_ms=300)
        bulk = new_expiry("w-bulk-é", "slot-5", "Zoë", "salon-5", delay_ms=300)  # through bullwait.engine.bulk
        [bulk_id] = await producer.schedule_expiries(iter([bulk]))
        note = NotificationJob.model_validate(notification_data("w-5"))
        note_id = await producer.send_slot_available(note, Priority.NORMAL, job_id="note-w-5")
        bad_id = await producer.add(QueueKey.WAITLIST_NOTIFICATION, note, job_id="note-refused", attempts=1)
        pref = PreferenceJob.model_validate(preference_data())
        pref_id = await producer.queue_preferences(pref)
        for key in ("WAITLIST_EXPIRY", "WAITLIST_NOTIFICATION", "PREFERENCE_CALCULATION"):
            start_node("compat/worker.js", key, "--fail-ids", "note-refused", ready="node worker ready")

        exp_job = await _finished(producer.queue(QueueKey.WAITLIST_EXPIRY), exp_id)
        seen = exp_job.returnvalue
        assert seen["by"] == "node" and seen["name"] == "check-expiry" and seen["id"] == "expiry_w-5"
        assert seen["data"] == expiry.to_wire()
        assert seen["opts"]["delay"] == 300 and seen["opts"]["attempts"] == 3
        assert seen["opts"]["backoff"] == {"type": "exponential", "delay": 1000}
        assert seen["opts"]["removeOnComplete"] == {"count": 100, "age": 3600}

        bulk_seen = (await _finished(producer.queue(QueueKey.WAITLIST_EXPIRY), bulk_id)).returnvalue
        assert bulk_seen["id"] == "expiry_w-bulk-é" and bulk_seen["data"] == bulk.to_wire()
        assert 0 < bulk_seen["opts"]["delay"] <= 300
        assert {k: v for k, v in bulk_seen["opts"].items() if k != "delay"} == {
            k: v for k, v in seen["opts"].items() if k != "delay"
        }

        note_job = await _finished(producer.queue(QueueKey.WAITLIST_NOTIFICATION), note_id)
        assert note_job.returnvalue["data"] == note.to_wire() == notification_data("w-5")
        assert note_job.returnvalue["opts"]["priority"] == 1 and note_job.returnvalue["id"] == "note-w-5"

        pref_job = await _finished(producer.queue(QueueKey.PREFERENCE_CALCULATION), pref_id)
        assert pref_job.returnvalue["data"] == preference_data()
        assert pref_job.returnvalue["opts"]["priority"] == 10

        refused = await _finished(producer.queue(QueueKey.WAITLIST_NOTIFICATION), bad_id)
        assert await producer.queue(QueueKey.WAITLIST_NOTIFICATION).getJobState(bad_id) == "failed"
        assert refused.failedReason == "node refused note-refused"
        assert refused.attemptsMade == 1 and "node refused" in refused.stacktrace[0]


async def test_both_runtimes_share_a_queue_under_load(
    env, settings: Settings, start_worker, start_node, sync_redis, prefix
) -> None:  # type: ignore[no-untyped-def]
    total = 5000
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.PREFERENCE_CALCULATION)
        jobs = [
            {
                "name": "calculate-preferences",
                "data": preference_data(f"b-{i}", f"c-{i}"),
                "opts": {"jobId": f"load-{i}", "removeOnComplete": False, "attempts": 1},
            }
            for i in range(total)
        ]
        for start in range(0, total, 1000):
            await queue.addBulk(jobs[start : start + 1000])
        python = start_worker(
            "-q",
            "waitlist-preference-calculation",
            extra_env={"PREFERENCE_CALCULATION_CONCURRENCY": "20", "QUEUE_LOG_LEVEL": "info"},
        )
        node = start_node(
            "compat/worker.js", "PREFERENCE_CALCULATION", "--concurrency", "20", "--record", ready="node worker ready"
        )

        async def all_done() -> bool:
            counts = await queue.getJobCounts("completed", "failed")
            return counts["completed"] + counts["failed"] >= total

        await eventually(all_done, 120, interval=0.1, message=f"{total} jobs finished")
        assert await queue.getFailedCount() == 0
        assert python.terminate() == 0
        assert node.stop() == 0

    by_node = sync_redis.lrange(f"{prefix}:compat:node-processed", 0, -1)
    by_python = [
        entry["jobId"]
        for entry in (json.loads(line) for line in python.log().splitlines() if line.startswith("{"))
        if entry.get("event") == "job completed"
    ]
    expected = {f"load-{i}" for i in range(total)}
    assert len(by_node) == len(set(by_node)), "a job ran twice in Node"
    assert len(by_python) == len(set(by_python)), "a job ran twice in Python"
    assert not set(by_node) & set(by_python), "a job ran in both runtimes"
    assert set(by_node) | set(by_python) == expected, "a job was lost"
    assert by_node and by_python, f"one runtime did all the work (node {len(by_node)}, python {len(by_python)})"
    # Every job was started once (bullmq's own attemptsStarted counter).
    pipe = sync_redis.pipeline(transaction=False)
    for job_id in sorted(expected):
        pipe.hget(f"{prefix}:waitlist-preference-calculation:{job_id}", "ats")
    assert set(pipe.execute()) == {"1"}
    print(f"load: {total} jobs, node {len(by_node)}, python {len(by_python)}")


async def test_node_worker_honours_options_of_python_timers(settings: Settings, start_node, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    """Timers added by the Producer (id outside `opts`, no `"delay":0`): a Node worker
    runs them under their own id, retries with the catalog's attempts and exponential
    backoff, and trims completed jobs to the job's removeOnComplete."""
    key = QueueKey.WAITLIST_EXPIRY
    ok_ids = [expiry_job_id(f"w-keep-{i}") for i in range(3)]
    async with Producer(settings) as producer:
        for i in range(3):
            await producer.add(
                key,
                new_expiry(f"w-keep-{i}", "s", "c", "salon"),
                job_id=ok_ids[i],
                delay_ms=100,
                removeOnComplete={"count": 1, "age": 3600},
            )
        fail_id = await producer.schedule_expiry(new_expiry("w-fail", "s", "c", "salon"), delay_ms=100)
        start_node(
            "compat/worker.js",
            key.value,
            "--concurrency",
            "1",
            "--record",
            "--fail-ids",
            fail_id,
            ready="node worker ready",
        )
        queue = producer.queue(key)

        async def all_ran() -> bool:
            ran = set(sync_redis.lrange(f"{prefix}:compat:node-processed", 0, -1))
            return ran >= set(ok_ids) and await queue.getJobState(fail_id) == "failed"

        await eventually(all_ran, 60, interval=0.1, message="3 timers completed and 1 out of attempts")
        failed = await Job.fromId(queue, fail_id)

    assert failed.id == fail_id and failed.attemptsMade == 3, "attempts: 3 from the job's opts"
    assert failed.failedReason == f"node refused {fail_id}" and len(failed.stacktrace) == 3
    # Each retry was delayed by the exponential backoff (1 s, then 2 s): the 'delayed'
    # events carry the due time, the stream id the time they were written (both Redis-side).
    retries = [
        int(fields["delay"]) - int(entry_id.split("-")[0])
        for entry_id, fields in sync_redis.xrange(f"{prefix}:waitlist-expiry:events")
        if fields.get("event") == "delayed" and fields.get("jobId") == fail_id
    ][1:]  # the first one is the add's own 100 ms delay
    assert len(retries) == 2 and 500 <= retries[0] <= 1000 and 1500 <= retries[1] <= 2000, retries
    # removeOnComplete {count: 1}: of the three completed timers only the last one is kept.
    completed = sync_redis.zrange(f"{prefix}:waitlist-expiry:completed", 0, -1)
    assert len(completed) == 1 and completed[0] in ok_ids
    assert sum(sync_redis.exists(f"{prefix}:waitlist-expiry:{job_id}") for job_id in ok_ids) == 1
