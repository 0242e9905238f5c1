"""`Producer.add_bulk` / `schedule_expiries`: the same jobs as one-by-one adds, fewer round trips."""

from __future__ import annotations

import json

import redis

from bullwait.catalog import QueueKey
from bullwait.producer import Producer, new_expiry
from bullwait.settings import Settings


async def test_schedule_expiries_writes_what_schedule_expiry_writes(settings: Settings, sync_redis: redis.Redis, prefix: str) -> None:
    one = new_expiry("single", "s-1", "c-1", "salon-1", delay_ms=60_000)
    many = [new_expiry(f"bulk-{i}", "s-1", "c-1", "salon-1", delay_ms=60_000) for i in range(25)]
    async with Producer(settings) as producer:
        single_id = await producer.schedule_expiry(one)
        ids = await producer.schedule_expiries(many, chunk=10)
        again = await producer.schedule_expiries(many[:3])  # same waitlist ids: no new jobs
    assert ids == [f"expiry_bulk-{i}" for i in range(25)] and again == ids[:3]
    assert sync_redis.zcard(f"{prefix}:waitlist-expiry:delayed") == 26
    ref = sync_redis.hgetall(f"{prefix}:waitlist-expiry:{single_id}")
    got = sync_redis.hgetall(f"{prefix}:waitlist-expiry:expiry_bulk-0")
    ref_opts, got_opts = json.loads(ref["opts"]), json.loads(got["opts"])
    assert abs(int(got["delay"]) - 60_000) < 2_000
    for opts in (ref_opts, got_opts):
        assert "jobId" not in opts, "the id names the job's key; a copy in opts only costs memory"
        opts.pop("delay")
    assert got_opts == ref_opts, "same retention, attempts and backoff as a single add"
    assert json.loads(got["data"])["waitlistId"] == "bulk-0" and got["name"] == ref["name"] == "check-expiry"


async def test_add_bulk_with_per_job_options(settings: Settings, sync_redis: redis.Redis, prefix: str) -> None:
    async with Producer(settings) as producer:
        jobs = [
            (new_expiry(f"w-{i}", "s", "c", "salon"), producer.job_options(QueueKey.WAITLIST_EXPIRY, job_id=f"custom-{i}"))
            for i in range(3)
        ]
        ids = await producer.add_bulk(QueueKey.WAITLIST_EXPIRY, jobs)
    assert ids == ["custom-0", "custom-1", "custom-2"]
    assert sync_redis.llen(f"{prefix}:waitlist-expiry:wait") == 3
