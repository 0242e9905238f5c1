"""`CompletionCalls` packs exactly what bullmq's `moveToCompletedArgs` would send, and the
worker completes jobs through it (fetching the next one, keeping retention)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from bullmq import Queue
from bullmq.job import Job

from bullwait.engine.autopipeline import pack
from bullwait.engine.completion import CompletionCalls
from bullwait.engine.connection import redis_options
from bullwait.engine.worker import BullwaitWorker
from bullwait.settings import Settings


async def _echo(job, token):  # type: ignore[no-untyped-def]
    return {"seen": job.data["n"]}


def _worker(settings: Settings, **opts: object) -> BullwaitWorker:
    return BullwaitWorker(
        "completion-q",
        _echo,
        {"connection": redis_options(settings), "prefix": settings.bullmq_prefix, "autorun": False, **opts},
    )


@pytest.mark.parametrize("remove", [None, False, True, 0, 7, {"count": 100, "age": 3600}])
@pytest.mark.parametrize("result", [None, {"n": 1, "é": [1.5, "x"]}, "text"])
@pytest.mark.parametrize("fetch", [True, False])
async def test_packs_what_bullmq_would_send(settings: Settings, remove: object, result: object, fetch: bool) -> None:
    worker = _worker(settings, limiter={"max": 5, "duration": 1000}, metrics={"maxDataPoints": 60})
    try:
        opts: dict[str, object] = {"attempts": 3, "failParentOnFailure": True}
        if remove is not None:
            opts["removeOnComplete"] = remove
        job = Job(worker, "check-expiry", {"n": 1}, opts, job_id="expiry_w-1")
        job.attemptsMade = 2
        ref_keys, ref_args = worker.backend.scripts.moveToCompletedArgs(
            job, result, job.opts.get("removeOnComplete", False), "tok-1", fetch
        )
        calls = CompletionCalls(worker)
        keys, args, packed = calls.build(job, result, "tok-1", fetch, timestamp=ref_args[1])
        assert keys == ref_keys
        assert args == ref_args
        assert packed == pack(("EVALSHA", calls.script.sha, len(ref_keys), *ref_keys, *ref_args))
    finally:
        await worker.close(force=True)


async def test_worker_completes_through_packed_calls(settings: Settings, sync_redis: redis.Redis, prefix: str) -> None:
    """End to end on a real Redis: each job completes with its return value, the next job is
    fetched in the same call, retention (removeOnComplete count 3) is applied by the script."""
    queue = Queue("completion-q", {"connection": redis_options(settings), "prefix": prefix})
    worker = _worker(settings, concurrency=2)
    try:
        for i in range(10):
            await queue.add("check-expiry", {"n": i}, {"jobId": f"job-{i}", "removeOnComplete": {"count": 3}})
        run = asyncio.ensure_future(worker.run())
        for _ in range(200):
            if (
                sync_redis.llen(f"{prefix}:completion-q:wait") == 0
                and sync_redis.llen(f"{prefix}:completion-q:active") == 0
            ):
                break
            await asyncio.sleep(0.05)
        kept = sync_redis.zrange(f"{prefix}:completion-q:completed", 0, -1)
        assert len(kept) == 3, kept
        for job_id in kept:
            fields = sync_redis.hgetall(f"{prefix}:completion-q:{job_id}")
            assert fields["returnvalue"] == f'{{"seen":{job_id.split("-")[1]}}}'
            assert fields["finishedOn"] and fields["atm"] == "1"
        await worker.close()
        await asyncio.wait_for(run, 10)
    finally:
        await worker.close(force=True)
        await queue.close()
