"""`Producer.add_bulk` / `schedule_expiries`: the same jobs as one-by-one adds, fewer round trips."""

from __future__ import annotations

import json

import pytest
import redis

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer, new_expiry


async def test_schedule_expiries_writes_what_schedule_expiry_writes(
    settings: Settings, sync_redis: redis.Redis, prefix: str
) -> None:
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
            (
                new_expiry(f"w-{i}", "s", "c", "salon"),
                producer.job_options(QueueKey.WAITLIST_EXPIRY, job_id=f"custom-{i}"),
            )
            for i in range(3)
        ]
        ids = await producer.add_bulk(QueueKey.WAITLIST_EXPIRY, jobs)
    assert ids == ["custom-0", "custom-1", "custom-2"]
    assert sync_redis.llen(f"{prefix}:waitlist-expiry:wait") == 3


async def test_bulk_adds_write_exactly_what_bullmq_addbulk_writes(
    redis_server, sync_redis: redis.Redis, prefix: str
) -> None:
    """`bullwait.engine.bulk.add_jobs` packs bullmq's add scripts itself: the keys it leaves must be
    bullmq-py's own `Queue.addBulk`'s, for standard, prioritized and delayed jobs."""
    from bullmq import Queue

    from bullwait.engine.bulk import NewJob, add_jobs, stored_opts

    specs = [
        ("std", {"attempts": 3, "backoff": {"type": "exponential", "delay": 1000}, "removeOnComplete": {"count": 100}}),
        ("prio", {"priority": 5, "removeOnFail": {"age": 60}}),
        ("late", {"delay": 60_000, "attempts": 2}),
    ]
    conn = {"connection": f"redis://127.0.0.1:{redis_server.port}/0"}
    ref, ours = Queue("q", {**conn, "prefix": f"{prefix}a"}), Queue("q", {**conn, "prefix": f"{prefix}b"})
    try:
        batch = [
            {"name": n, "data": {"n": n, "é": [1, 2]}, "opts": dict(o, jobId=n, timestamp=1_700_000_000_000)}
            for n, o in specs
        ]
        await ref.addBulk(batch)
        await ref.addBulk(batch[:1])
        sync_redis.script_flush()  # ours must load the scripts again
        jobs = [
            NewJob(
                n,
                json.dumps({"n": n, "é": [1, 2]}, separators=(",", ":")),
                stored_opts(dict(o, jobId=n, timestamp=1_700_000_000_000)),
                n,
                1_700_000_000_000,
            )
            for n, o in specs
        ]
        assert await add_jobs(ours, jobs) == ["std", "prio", "late"]
        assert await add_jobs(ours, jobs[:1]) == ["std"]  # same id again: nothing added twice
    finally:
        await ref.close()
        await ours.close()

    def dump(p: str) -> dict[str, object]:
        out: dict[str, object] = {}
        for key in sorted(sync_redis.scan_iter(f"{p}:q:*")):
            name, kind = key[len(p) + 3 :], sync_redis.type(key)
            if kind == "hash":
                out[name] = fields = sync_redis.hgetall(key)
                if "opts" in fields:  # ours leaves out what no reader uses: opts.jobId, a zero delay
                    opts = json.loads(fields["opts"])
                    opts.pop("jobId", None)
                    if opts.get("delay") == 0:
                        del opts["delay"]
                    fields["opts"] = opts
            elif kind == "zset":
                out[name] = sync_redis.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                out[name] = sync_redis.lrange(key, 0, -1)
            elif kind == "string":
                out[name] = sync_redis.get(key)
            elif kind == "stream":
                out[name] = [(f["event"], f.get("jobId")) for _, f in sync_redis.xrange(key)]
        return out

    a, b = dump(f"{prefix}a"), dump(f"{prefix}b")
    assert set(a) == set(b) and {"std", "prio", "late", "delayed", "prioritized", "wait", "events"} <= set(a)
    for name in a:
        assert a[name] == b[name], name


def test_bulk_add_refuses_options_it_does_not_pack() -> None:
    """Flow, deduplication and repeat options need arguments `add_jobs` does not build:
    refused by name instead of adding a job without its parent or deduplication key."""
    import pytest

    from bullwait.engine.bulk import NewJob, stored_opts
    from bullwait.errors import BadArgument

    with pytest.raises(BadArgument, match=r"deduplication, parent.*Queue\.add"):
        NewJob("n", "{}", stored_opts({"parent": {"id": "1", "queue": "q"}, "deduplication": {"id": "d"}}), "j-1", 1)


async def test_schedule_expiries_reads_a_generator(settings: Settings, sync_redis: redis.Redis, prefix: str) -> None:
    """A generator of payloads is read a chunk at a time; non-ASCII data arrives intact."""
    async with Producer(settings) as producer:
        ids = await producer.schedule_expiries((new_expiry(f"gen-{i}", "s", "Zoë", "salon") for i in range(7)), chunk=3)
    assert ids == [f"expiry_gen-{i}" for i in range(7)]
    assert sync_redis.zcard(f"{prefix}:waitlist-expiry:delayed") == 7
    data = json.loads(sync_redis.hget(f"{prefix}:waitlist-expiry:expiry_gen-6", "data"))
    assert data["customerId"] == "Zoë" and data["waitlistId"] == "gen-6"


async def test_a_chunk_goes_as_several_short_transactions(
    settings: Settings, sync_redis: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis serves no other client while it runs a MULTI block, so a chunk is cut into blocks
    of `TRANSACTION_JOBS`: every job of every block is added, in order, also when the scripts
    must be loaded again (each block then refuses its jobs with NOSCRIPT)."""
    from bullwait.engine import bulk

    blocks: list[int] = []
    block_result = bulk._block_result

    def counting(replies: list[object]) -> list[object]:
        blocks.append(len(replies) - 2)  # the queued commands, between MULTI's +OK and EXEC's reply
        return block_result(replies)

    monkeypatch.setattr(bulk, "TRANSACTION_JOBS", 4)
    monkeypatch.setattr(bulk, "_block_result", counting)
    many = [new_expiry(f"blk-{i}", "s", "c", "salon", delay_ms=60_000) for i in range(10)]
    async with Producer(settings) as producer:
        await producer.schedule_expiries(many[:1])  # the queue's scripts are known...
        sync_redis.script_flush()  # ...then gone: every block of the next chunk meets NOSCRIPT
        blocks.clear()
        ids = await producer.schedule_expiries(many, chunk=10)
        again = await producer.schedule_expiries(many, chunk=10)
    assert ids == again == [f"expiry_blk-{i}" for i in range(10)]
    assert sync_redis.zcard(f"{prefix}:waitlist-expiry:delayed") == 10
    assert blocks == [4, 4, 2, 4, 4, 2, 4, 4, 2], "the chunk, its NOSCRIPT retry and the repeat, in blocks of 4"


def test_transaction_blocks() -> None:
    from bullwait.engine.bulk import transaction_blocks

    commands = [bytes([i]) for i in range(5)]
    assert transaction_blocks(commands, 2) == [commands[0:2], commands[2:4], commands[4:5]]
    assert transaction_blocks(commands, 5) == [commands]
    assert transaction_blocks([], 2) == [[]], "an empty chunk is one empty MULTI/EXEC, as before"
