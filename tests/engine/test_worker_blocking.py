"""The worker's blocking wait: it survives redis-py 8's 5 s default read timeout and ends when the worker closes."""

from __future__ import annotations

import asyncio

from bullmq import Queue

from bullwait.engine.connection import redis_options
from bullwait.engine.worker import BullwaitWorker
from bullwait.settings import Settings


async def _noop(job, token):  # type: ignore[no-untyped-def]
    return None


def _worker(settings: Settings) -> BullwaitWorker:
    return BullwaitWorker(
        "waitlist-expiry",
        _noop,
        {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False},
    )


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


async def test_close_ends_a_wait_whose_cancellation_came_as_the_bzpopmin_was_sent(settings: Settings) -> None:
    """SIGTERM right after a queue drained: `close()` cancels the idle BZPOPMIN in the loop turn
    in which redis-py's `wait_for(send)` finishes, and Python 3.11's wait_for swallowed that
    cancellation: close() then waited out the whole block (a stock bullmq-py worker, whose read
    timeout equals its block, kept re-sending it for minutes). The send is made to start
    close() at that very moment; the wait must end cancelled, not with a BZPOPMIN reply."""
    worker = BullwaitWorker(
        "waitlist-expiry",
        _noop,
        {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False, "drainDelay": 1},
    )
    await worker.prime()
    conn = worker.backend.blocking_connection.conn.connection  # bullmq's blocking client has one
    send = conn._send_packed_command
    closing: list[asyncio.Task[None]] = []
    waits: list[asyncio.Task[int]] = []

    async def send_then_close(command: list[bytes]) -> None:
        await send(command)
        if not closing and any(b"BZPOPMIN" in part for part in command):
            waits.append(worker.waiting)
            closing.append(asyncio.ensure_future(worker.close()))  # runs before wait_for resumes

    conn._send_packed_command = send_then_close
    async with asyncio.timeout(30):
        await worker.run()
        await closing[0]
    [wait] = waits
    assert wait is not None and wait.done()
    assert wait.cancelled(), f"the wait outlived close(): it ended with {wait.result()!r} from Redis"


async def test_no_wait_starts_once_close_has_begun(settings: Settings) -> None:
    """`close()` cancels the wait in progress; a fetch the worker loop had already started
    (its task not yet run) then began a new BZPOPMIN that nobody cancelled: close() waited
    out the drain delay, or the worker took one more job. That fetch must give up."""
    worker = _worker(settings)
    queue = Queue("waitlist-expiry", {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
    try:
        await worker.prime()
        job = await queue.add("check-expiry", {})  # also sets the marker: BZPOPMIN would not block
        worker.drained = True  # the worker had found the queue empty: its next fetch waits first
        worker.closing = True  # what close() sets before it cancels the wait in progress
        assert await worker.getNextJob("late-fetch") is None
        assert await queue.getJobState(job.id) == "waiting"
    finally:
        await worker.close(force=True)
        await queue.close()
