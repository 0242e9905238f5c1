"""A test plugin for `bullwait worker` (loaded with BULLWAIT_PROCESSORS=helpers.reliability_processors:register).

It replaces the three built-in processors with ones that record their side effects in
Redis, under the test's own prefix, so a test can count what really happened:

    <prefix>:bwtest:starts   hash <QueueKey>:<jobId> -> how many times a processor started the job
    <prefix>:bwtest:effects  hash <QueueKey>:<jobId> -> how many times it ran to the end
    <prefix>:bwtest:by       hash <QueueKey>:<jobId> -> pid of the worker process that finished it

Job data may carry `sleepMs` (kept by the payload models as an extra field): the
processor sleeps that long between start and end, so a test can kill a worker mid-job.
`failAlways: true` makes it raise (a retryable error) right after counting the start.
Payload validation is the built-in one: invalid data still fails the job once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bullwait.engine.connection import bound_retries, redis_client
from bullwait.runtime.dispatch import Context, Registry
from bullwait.waitlist.catalog import JOB_NAMES, QueueKey
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, WireModel

_clients: dict[str, Any] = {}


def _redis(ctx: Context) -> Any:
    key = ctx.settings.bullmq_prefix
    if key not in _clients:
        # Like bullwait's own connections: ride through a Redis restart (BULLWAIT_REDIS_RETRY_TIMEOUT).
        _clients[key] = redis_client(ctx.settings)
        bound_retries(ctx.settings, _clients[key])
    return _clients[key]


def keys(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}:bwtest:{name}" for name in ("starts", "effects", "by")}


async def counted(payload: WireModel, ctx: Context) -> dict[str, Any]:
    names = keys(ctx.settings.bullmq_prefix)
    client = _redis(ctx)
    job_id = f"{ctx.queue.value}:{ctx.job.id}"  # ids are per queue
    await client.hincrby(names["starts"], job_id, 1)
    if (payload.model_extra or {}).get("failAlways"):
        raise RuntimeError("asked to fail (failAlways)")
    sleep_ms = (payload.model_extra or {}).get("sleepMs", 0)
    if isinstance(sleep_ms, (int, float)) and sleep_ms > 0:
        await asyncio.sleep(sleep_ms / 1000)
    await client.hincrby(names["effects"], job_id, 1)
    await client.hset(names["by"], job_id, os.getpid())
    return {"pid": os.getpid()}


def _dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack (diagnostics for a test that hangs)."""
    import sys

    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}", file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            if coro is not None and not hasattr(coro, "cr_frame") and not hasattr(coro, "gi_frame"):
                print(f"    awaiting {coro!r}"[:300], file=sys.stderr)
                break
    sys.stderr.flush()


def register(registry: Registry) -> None:
    try:
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    except (RuntimeError, NotImplementedError):
        pass
    registry.register(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"], ExpiryJob, counted)
    registry.register(QueueKey.WAITLIST_NOTIFICATION, JOB_NAMES["SEND_SLOT_AVAILABLE"], NotificationJob, counted)
    registry.register(QueueKey.PREFERENCE_CALCULATION, JOB_NAMES["CALCULATE_PREFERENCES"], PreferenceJob, counted)


def counter_field(queue: QueueKey, job_id: str) -> str:
    return f"{queue.value}:{job_id}"
