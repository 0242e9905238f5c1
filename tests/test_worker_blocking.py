"""The worker's blocking wait survives redis-py 8's 5 s default read timeout."""

from __future__ import annotations

import asyncio

from bullwait.connection import redis_options
from bullwait.settings import Settings
from bullwait.worker import BullwaitWorker


async def _noop(job, token):  # type: ignore[no-untyped-def]
    return None


def _worker(settings: Settings) -> BullwaitWorker:
    return BullwaitWorker("waitlist-expiry", _noop, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False})


async def test_blocking_read_timeout_exceeds_the_longest_block(settings: Settings) -> None:
    worker = _worker(settings)
    try:
        timeout = worker.blocking_read_timeout()
        assert timeout is None or timeout > max(worker.maximumBlockTimeout, worker.opts["drainDelay"])
    finally:
        await worker.close(force=True)


async def test_idle_wait_returns_after_the_drain_delay(settings: Settings) -> None:
    """Before the fix this BZPOPMIN (5 s) hit the 5 s read timeout and retried with backoff for minutes."""
    worker = _worker(settings)
    try:
        await worker.prime()
        block = worker.getBlockTimeout(0)
        assert block >= 5
        result = await asyncio.wait_for(worker.backend.waitForJob(block), timeout=block + 6)
        assert result is None
    finally:
        await worker.close(force=True)
