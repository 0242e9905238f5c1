"""Long blocking waits: what a worker does while its next timer is more than 5 s away."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from bullwait.connection import redis_options
from bullwait.settings import Settings


async def test_blocking_wait_longer_than_redis_py_default_timeout(settings: Settings) -> None:
    """A worker blocks on BZPOPMIN for up to 10 s. With redis-py 8's 5 s default read
    timeout (and bullmq-py's retries) the wait timed out and was re-sent over and over,
    and an idle worker ran its delayed jobs tens of seconds late. The connection options
    must let a 6 s block end normally."""
    client = aioredis.Redis(**redis_options(settings))
    try:
        started = time.monotonic()
        result = await asyncio.wait_for(client.bzpopmin(f"{settings.bullmq_prefix}:nothing", 6), 30)
        assert result is None
        assert time.monotonic() - started < 29, "the 6 s block ended by itself, not by the guard"
    finally:
        await client.aclose()
