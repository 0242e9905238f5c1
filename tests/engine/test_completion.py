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


async def test_a_prefix_with_percent_signs_is_packed_as_it_is(settings: Settings) -> None:
    worker = BullwaitWorker("q%s", _echo, {"connection": redis_options(settings), "prefix": "b%d%%", "autorun": False})
    try:
        job = Job(worker, "n", {}, {}, job_id="7%s")
        calls = CompletionCalls(worker)
        ref_keys, ref_args = worker.backend.scripts.moveToCompletedArgs(job, "%s", False, "t%", True)
        keys, args, packed = calls.build(job, "%s", "t%", True, timestamp=ref_args[1])
        assert (keys, args) == (ref_keys, ref_args)
        assert packed == pack(("EVALSHA", calls.script.sha, len(ref_keys), *ref_keys, *ref_args))
    finally:
        await worker.close(force=True)


async def test_one_worker_packs_each_jobs_own_options(settings: Settings) -> None:
    """Options are packed once per distinct job options and reused: jobs whose options compare
    equal but pack differently (1, 1.0, True) each get their own bytes, as bullmq packs them."""
    worker = _worker(settings, limiter={"max": 5, "duration": 1000}, metrics={"maxDataPoints": 60})
    calls = CompletionCalls(worker)
    removes = [True, 1, 1.0, {"count": 1}, {"count": True}, {"count": 1, "age": 5}, False, 0, None, {"count": [1]}]
    try:
        for round_ in range(2):
            for i, remove in enumerate(removes):
                opts: dict[str, object] = {"attempts": 1 + i % 3}
                if remove is not None:
                    opts["removeOnComplete"] = remove
                if i % 2:
                    opts.update(failParentOnFailure=1 if i % 4 == 1 else True)
                job = Job(worker, "n", {}, opts, job_id=f"j-{i}")
                job.attemptsMade = (i + round_) % 4 * 70  # past 127: a two-byte msgpack int
                token = f"tok-{i}-" + "x" * (i * 4)  # past 31 characters: another msgpack string header
                _keys, ref_args = worker.backend.scripts.moveToCompletedArgs(
                    job, None, job.opts.get("removeOnComplete", False), token, True
                )
                _keys, args, _packed = calls.build(job, None, token, True, timestamp=ref_args[1])
                assert args[-1] == ref_args[-1], (round_, remove)
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
