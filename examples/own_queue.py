"""bullwait's Worker on a queue of your own, fed by bullmq's Queue.

    REDIS_URL=redis://localhost:6379/0 python examples/own_queue.py

`bullwait.Worker` takes the same arguments as `bullmq.Worker`: swap the import and the
worker runs delayed jobs on time, shows in Node's `getWorkers()` and Bull Board, and
completes jobs in fewer round trips (docs/api.md lists what differs). The example adds
three jobs to the "emails" queue, processes them, then closes the worker, which lets
active jobs finish first. A real worker would wait for SIGTERM instead of a job count.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from bullmq import Job, Queue

from bullwait import Worker

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("BULLMQ_PREFIX", "bull")  # the same on every producer and worker of a queue
RECIPIENTS = ["ana@example.com", "luis@example.com", "marta@example.com"]


async def send_email(job: Job, token: str) -> dict[str, Any]:
    """The processor: its return value is stored as the job's result; raising fails the job
    (retried per the job's `attempts` and `backoff`)."""
    await asyncio.sleep(0.05)  # your mail API call
    return {"sent": job.data["to"]}


async def main() -> None:
    connection = {"connection": REDIS_URL, "prefix": PREFIX}
    queue = Queue("emails", connection)
    worker = Worker("emails", send_email, {**connection, "concurrency": 5, "name": "emails-example"})

    finished = asyncio.Event()
    completed: list[str] = []

    def on_completed(job: Job, result: Any) -> None:
        print(f"completed {job.name} {job.id}: {result}", flush=True)
        completed.append(job.id)
        if len(completed) == len(RECIPIENTS):
            finished.set()

    worker.on("completed", on_completed)
    worker.on("failed", lambda job, err: print(f"failed {job.id}: {err}", flush=True))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop early, still cleanly
        loop.add_signal_handler(sig, finished.set)

    try:
        for to in RECIPIENTS:
            await queue.add("welcome", {"to": to}, {"attempts": 3, "backoff": {"type": "exponential", "delay": 1000}})
        await asyncio.wait_for(finished.wait(), timeout=60)
    finally:
        await worker.close()  # stops fetching, waits for active jobs, closes its connections
        await queue.close()
    print(f"worker closed after {len(completed)} jobs", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
