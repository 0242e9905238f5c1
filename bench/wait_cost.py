"""`python -m bench.wait_cost [--adds N]`: what BULLWAIT_WAIT_REPLICAS=1 costs, against 0.

Starts its own master and replica (redis-server, free ports, AOF off) on this host and
measures, for N=0 and N=1: sequential single adds (per-call latency p50/p99, adds/s), single
adds with 50 in flight, bulk adds (`schedule_expiries`, chunks of 1,000) and sequential send
claims. Never touches any other Redis. Takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from bullwait.dev.embedded import RedisServer
from bullwait.engine.connection import redis_client
from bullwait.engine.durable import Durability
from bullwait.settings import Settings
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.producer import Producer, new_expiry


def _pair() -> tuple[RedisServer, RedisServer]:
    master, replica = RedisServer(appendonly=False).start(), RedisServer(appendonly=False).start()
    client = redis.Redis(port=replica.port, decode_responses=True)
    client.replicaof("127.0.0.1", master.port)
    while client.info("replication").get("master_link_status") != "up":
        time.sleep(0.05)
    return master, replica


async def _timed(calls: int, one: Callable[[int], Awaitable[Any]]) -> list[float]:
    latencies = []
    for i in range(calls):
        start = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - start)
    return latencies


def _row(name: str, replicas: int, count: int, seconds: float, latencies: list[float] | None = None) -> str:
    text = f"{name:<28} N={replicas}  {count / seconds:>9,.0f}/s"
    if latencies:
        q = statistics.quantiles(latencies, n=100)
        text += f"   p50 {q[49] * 1000:.3f} ms  p99 {q[98] * 1000:.3f} ms"
    return text


async def _measure(port: int, replicas: int, adds: int) -> list[str]:
    prefix = f"wc{uuid.uuid4().hex[:6]}"
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        bullmq_prefix=prefix,
        bullwait_store_prefix=f"{prefix}-s:",
        bullwait_wait_replicas=replicas,
    )
    rows = []
    async with Producer(settings) as producer:
        await producer.schedule_expiry(new_expiry("warm", "s", "c", "salon", 60_000))
        start = time.perf_counter()
        lat = await _timed(adds, lambda i: producer.schedule_expiry(new_expiry(f"a{i}", "s", "c", "salon", 60_000)))
        rows.append(_row("single add, sequential", replicas, adds, time.perf_counter() - start, lat))

        start = time.perf_counter()
        sem = asyncio.Semaphore(50)

        async def limited(i: int) -> None:
            async with sem:
                await producer.schedule_expiry(new_expiry(f"c{i}", "s", "c", "salon", 60_000))

        await asyncio.gather(*(limited(i) for i in range(adds)))
        rows.append(_row("single add, 50 in flight", replicas, adds, time.perf_counter() - start))

        bulk = adds * 10
        start = time.perf_counter()
        await producer.schedule_expiries((new_expiry(f"b{i}", "s", "c", "salon", 60_000) for i in range(bulk)), 1000)
        rows.append(_row("bulk add (chunks of 1,000)", replicas, bulk, time.perf_counter() - start))

    records = SendRecords(redis_client(settings), settings.bullwait_store_prefix, Durability.from_settings(settings))
    try:
        now = int(time.time() * 1000)
        start = time.perf_counter()
        lat = await _timed(adds, lambda i: records.claim(records.key("salon", f"w{i}", "s"), f"j{i}/t", now, 5000))
        rows.append(_row("send claim, sequential", replicas, adds, time.perf_counter() - start, lat))
    finally:
        await records.client.aclose()
    return rows


async def main(adds: int) -> None:
    master, replica = _pair()
    try:
        for replicas in (0, 1, 0, 1):  # twice each, interleaved: the second round is the one to read
            rows = await _measure(master.port, replicas, adds)
            print("\n".join(rows), flush=True)
    finally:
        replica.cleanup()
        master.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adds", type=int, default=2000)
    asyncio.run(main(parser.parse_args().adds))
