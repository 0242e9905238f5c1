"""Jobs in every state, written with bullmq-py the way producers and workers write them.

`populate` fills the expiry queue (and pauses the notification queue with jobs in it) and
returns what it wrote, so tests can compare every command's output with known counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bullmq import Queue, Worker

from bullwait.engine.connection import bullmq_connection
from bullwait.settings import Settings
from bullwait.waitlist.catalog import SPECS, QueueKey, queue_name

from helpers.jobdata import expiry_data, notification_data


@dataclass
class Populated:
    expiry: str
    notification: str
    ids: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _queue(settings: Settings, key: QueueKey) -> Queue:
    return Queue(
        queue_name(key, settings), {"connection": bullmq_connection(settings), "prefix": settings.bullmq_prefix}
    )


async def take(settings: Settings, key: QueueKey, job_id: str, outcome: str, token: str = "tok") -> None:
    """Fetch the next waiting job with a real bullmq Worker and leave it active, completed or failed."""
    worker = Worker(
        queue_name(key, settings), None, {"connection": bullmq_connection(settings), "prefix": settings.bullmq_prefix}
    )
    job = await worker.getNextJob(token)
    assert job is not None and job.id == job_id, (job and job.id, job_id)
    if outcome == "completed":
        await job.moveToCompleted({"ok": True}, token)
    elif outcome == "failed":
        await job.log("calling WhatsApp")
        await job.moveToFailed(Exception("WhatsApp said 131026"), token)
    worker.closing = True
    if outcome != "active":
        await worker.close()
    else:  # keep the lock: drop the connections without releasing it
        await worker.backend.blocking_connection.close()
        await worker.backend.connection.close()


async def populate(settings: Settings, sync_redis: Any) -> Populated:
    exp_key, note_key = QueueKey.WAITLIST_EXPIRY, QueueKey.WAITLIST_NOTIFICATION
    exp, note = _queue(settings, exp_key), _queue(settings, note_key)
    spec = SPECS[exp_key]
    base = spec.default_job_options()
    ids: dict[str, list[str]] = {
        k: []
        for k in ("completed", "failed", "active", "stalled", "waiting", "prioritized", "delayed", "overdue", "paused")
    }
    try:
        # Finished and active first: a worker takes whatever waits.
        for state, n in (("completed", 2), ("failed", 3), ("active", 1), ("stalled", 1)):
            for i in range(n):
                job_id = f"expiry_{state}-{i}"
                opts = dict(base, jobId=job_id, attempts=1)
                await exp.add(spec.job_name, expiry_data(f"{state}-{i}"), opts)
                await take(settings, exp_key, job_id, "active" if state == "stalled" else state)
                ids[state].append(job_id)
        # The stalled one lost its lock (its worker died).
        sync_redis.delete(f"{settings.bullmq_prefix}:{exp.name}:{ids['stalled'][0]}:lock")
        for i in range(4):
            job = await exp.add(spec.job_name, expiry_data(f"wait-{i}"), dict(base, jobId=f"expiry_wait-{i}"))
            ids["waiting"].append(job.id)
        for i in range(2):
            job = await exp.add(
                spec.job_name, expiry_data(f"prio-{i}"), dict(base, jobId=f"expiry_prio-{i}", priority=10)
            )
            ids["prioritized"].append(job.id)
        for i in range(5):
            job = await exp.add(
                spec.job_name, expiry_data(f"delay-{i}"), dict(base, jobId=f"expiry_delay-{i}", delay=15 * 60_000)
            )
            ids["delayed"].append(job.id)
        # A timer that was due two minutes ago and never fired (no worker ran).
        job = await exp.add(
            spec.job_name,
            expiry_data("late-0"),
            dict(base, jobId="expiry_late-0", delay=60_000, timestamp=int(time.time() * 1000) - 180_000),
        )
        ids["overdue"].append(job.id)
        # A paused queue with jobs waiting in it.
        await note.pause()
        for i in range(3):
            job = await note.add("send-slot-available", notification_data(f"n-{i}"), {"jobId": f"note-{i}"})
            ids["paused"].append(job.id)
    finally:
        await exp.close()
        await note.close()
    counts = {
        "waiting": 4,
        "prioritized": 2,
        "delayed": 6,
        "active": 2,
        "completed": 2,
        "failed": 3,
    }
    return Populated(exp.name, note.name, ids, counts)
