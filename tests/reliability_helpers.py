"""Helpers shared by the reliability and security tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from bullwait.catalog import QueueKey
from bullwait.producer import Producer

from conftest import ROOT

# Load the counting test processors into `bullwait worker` (see reliability_processors.py)
# and give a dead worker's jobs back within seconds (the defaults are 30 s each).
COUNTING = {
    "BULLWAIT_PROCESSORS": "reliability_processors:register",
    "PYTHONPATH": str(ROOT / "tests"),
}
FAST_RECOVERY = {
    **COUNTING,
    "BULLWAIT_LOCK_DURATION_MS": "1500",
    "BULLWAIT_STALLED_INTERVAL_MS": "500",
}


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


async def counts(producer: Producer, key: QueueKey) -> dict[str, int]:
    states = ("waiting", "active", "delayed", "prioritized", "completed", "failed", "paused", "waiting-children")
    return dict(await producer.queue(key).getJobCounts(*states))
