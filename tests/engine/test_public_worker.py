"""`bullwait.Worker` keeps `bullmq.Worker`'s behaviour: the behaviours bullmq-py's own
worker, delay, priority, flow, scheduler, lock, cancellation and event tests check,
run against the public class and a real Redis.

Four tests hold deliberate differences (docs/api.md, "Differences from bullmq.Worker"),
which a stock `bullmq.Worker` fails: the limiter is waited out rather than slept through,
a job whose backoff cannot be computed fails once instead of staying active, the
blocking connection carries Node's name, and only Redis backends are taken.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from bullmq import DelayedError, FlowProducer, Job, Queue, QueueEvents, UnrecoverableError, WaitingChildrenError

import bullwait
from bullwait.settings import Settings

from helpers.common import job_events
from helpers.reliability import eventually

Worker = bullwait.Worker
Processor = Callable[..., Awaitable[Any]]


class Kit:
    """Queues and workers of one test, on its own prefix; all closed after it."""

    def __init__(self, settings: Settings) -> None:
        self.opts: dict[str, Any] = {"connection": settings.redis_url, "prefix": settings.bullmq_prefix}
        self.prefix = settings.bullmq_prefix
        self.closables: list[Any] = []

    def queue(self, name: str = "q") -> Queue:
        queue = Queue(name, dict(self.opts))
        self.closables.append(queue)
        return queue

    def worker(self, processor: Processor | None, queue: str = "q", **opts: Any) -> Any:
        worker = Worker(queue, processor, {**self.opts, **opts})
        self.closables.append(worker)
        return worker

    async def close(self) -> None:
        for item in reversed(self.closables):
            if isinstance(item, Worker):
                if not item.closed:
                    await item.close(force=True)
            else:
                await item.close()


@pytest.fixture
async def kit(settings: Settings) -> AsyncIterator[Kit]:
    made = Kit(settings)
    yield made
    await made.close()


async def until(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll `predicate` (plain or async) until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def state_is(queue: Queue, job_id: str, *states: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await queue.getJobState(job_id) in states

    return check


async def wait_state(queue: Queue, job_id: str, *states: str) -> Job:
    await until(state_is(queue, job_id, *states), what=f"job {job_id} {'/'.join(states)}")
    return await Job.fromId(queue, job_id)


def now_ms() -> int:
    return int(time.time() * 1000)


def events_of(client: redis.Redis, kit: Kit, job_id: str) -> list[str]:
    """What the job went through, in order (helpers.common.job_events), whatever the timing."""
    return [e["event"] for e in job_events(client, kit.prefix, "q", job_id)]


# --- processing ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["done", ["foo"], True, {"answer": 42, "ok": True}, None])
async def test_completes_a_job_with_its_return_value(kit: Kit, value: Any) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {"foo": "bar"}, {"removeOnComplete": False})

    async def process(job: Job, token: str) -> Any:
        return value

    kit.worker(process)
    done = await wait_state(queue, job.id, "completed")
    assert (done.attemptsMade, done.data, done.returnvalue) == (1, {"foo": "bar"}, value)
    assert done.finishedOn is not None and done.processedOn is not None


async def test_return_value_that_is_not_json_fails_the_job(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {"foo": "bar"})

    async def process(job: Job, token: str) -> float:
        return math.nan

    kit.worker(process)
    failed = await wait_state(queue, job.id, "failed")
    assert "Out of range float values are not JSON compliant" in failed.failedReason
    assert failed.attemptsMade == 1 and len(failed.stacktrace) == 1 and failed.returnvalue is None


async def test_processor_error_fails_the_job_with_its_message(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {"foo": "bar"})
    failed_events: list[tuple[str, str]] = []

    async def process(job: Job, token: str) -> None:
        raise Exception("Failed")

    worker = kit.worker(process)
    worker.on("failed", lambda job, err: failed_events.append((job.id, str(err))))
    failed = await wait_state(queue, job.id, "failed")
    assert failed.failedReason == "Failed"
    assert failed.attemptsMade == 1 and len(failed.stacktrace) == 1 and failed.finishedOn is not None
    await until(lambda: bool(failed_events), what="failed event")
    assert failed_events == [(job.id, "Failed")]


async def test_manual_processing_with_get_next_job(kit: Kit) -> None:
    queue = kit.queue()
    worker = kit.worker(None)
    active: list[str] = []
    worker.on("active", lambda job, prev: active.append(job.id))
    first = await queue.add("test", {"foo": "bar"})
    second = await queue.add("test", {"foo": "baz"})

    job = await worker.getNextJob("my-token")
    assert job.id == first.id and await job.isActive() and active == [first.id]
    await job.moveToCompleted("return value", "my-token")
    assert await job.isCompleted() and job.returnvalue == "return value" and job.attemptsMade == 1

    job = await worker.getNextJob("my-token")
    assert job.id == second.id
    await job.moveToFailed(Exception("job failed for some reason"), "my-token")
    assert await job.isFailed() and job.failedReason == "job failed for some reason" and job.attemptsMade == 1


async def test_progress_logs_and_data_updates_from_the_processor(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test", {"step": 1})

    async def process(job: Job, token: str) -> str:
        await job.updateProgress({"percent": 50})
        await job.log("half way")
        await job.updateData({"step": 2})
        return "ok"

    kit.worker(process)
    done = await wait_state(queue, job.id, "completed")
    assert done.progress == {"percent": 50} and done.data == {"step": 2}
    assert (await queue.getJobLogs(job.id))["logs"] == ["half way"]


# --- retries and delays -------------------------------------------------------------


async def test_attempts_with_fixed_backoff_retry_then_complete(kit: Kit, sync_redis: redis.Redis) -> None:
    queue = kit.queue()
    runs: list[int] = []

    async def process(job: Job, token: str) -> str:
        runs.append(job.attemptsMade)
        if job.attemptsMade < 2:
            raise Exception("Not yet!")
        return "third time"

    kit.worker(process)
    job = await queue.add("test", {}, {"attempts": 3, "backoff": {"type": "fixed", "delay": 300}})
    await until(lambda: len(runs) >= 1, what="first attempt")
    await until(state_is(queue, job.id, "delayed", "completed"), what="retry scheduled")
    done = await wait_state(queue, job.id, "completed")
    assert done.returnvalue == "third time" and done.attemptsMade == 3 and len(done.stacktrace) == 2
    assert runs == [0, 1, 2]
    # Each retry waited its backoff in delayed; without one it would go straight back to wait.
    run = ["active"]
    backoff = ["delayed", "waiting"]
    expected = ["added", "waiting", *run, *backoff, *run, *backoff, *run, "completed"]
    assert events_of(sync_redis, kit, job.id) == expected


async def test_custom_backoff_strategy(kit: Kit) -> None:
    queue = kit.queue()
    calls: list[tuple[int, str, str]] = []

    def strategy(attempts_made: int, type_: str, err: Exception, job: Job) -> int:
        calls.append((attempts_made, type_, str(err)))
        return attempts_made * 100

    async def process(job: Job, token: str) -> None:
        if job.attemptsMade < 2:
            raise Exception("Not yet!")

    kit.worker(process, settings={"backoffStrategy": strategy})
    job = await queue.add("test", {}, {"attempts": 3, "backoff": {"type": "custom"}})
    done = await wait_state(queue, job.id, "completed")
    assert done.attemptsMade == 3
    assert calls == [(1, "custom", "Not yet!"), (2, "custom", "Not yet!")]


async def test_backoff_type_without_a_strategy_fails_the_job_once(kit: Kit) -> None:
    queue = kit.queue()

    async def process(job: Job, token: str) -> None:
        raise Exception("Not yet!")

    kit.worker(process)  # no settings.backoffStrategy: bullmq-py would raise while failing it
    job = await queue.add("test", {}, {"attempts": 3, "backoff": {"type": "custom"}})
    failed = await wait_state(queue, job.id, "failed")
    assert failed.attemptsMade == 1 and "opts.backoff" in failed.failedReason and "Not yet!" in failed.failedReason


async def test_unrecoverable_error_is_not_retried(kit: Kit) -> None:
    queue = kit.queue()

    async def process(job: Job, token: str) -> None:
        raise UnrecoverableError("bad input")

    kit.worker(process)
    job = await queue.add("test", {}, {"attempts": 5, "backoff": {"type": "fixed", "delay": 10}})
    failed = await wait_state(queue, job.id, "failed")
    assert failed.attemptsMade == 1 and "bad input" in failed.failedReason


async def test_delayed_job_runs_when_due(kit: Kit, sync_redis: redis.Redis) -> None:
    queue = kit.queue()
    order: list[str] = []

    async def process(job: Job, token: str) -> None:
        order.append(job.name)

    job = await queue.add("later", {}, {"delay": 500})
    assert await queue.getJobState(job.id) == "delayed"
    await queue.add("now", {})
    kit.worker(process, concurrency=1)
    await wait_state(queue, job.id, "completed")
    # Not before its delay: a job added after it without one runs first, and it ran from delayed.
    assert order == ["now", "later"]
    assert events_of(sync_redis, kit, job.id) == ["added", "delayed", "waiting", "active", "completed"]


async def test_processor_can_move_its_job_back_to_delayed(kit: Kit, sync_redis: redis.Redis) -> None:
    queue = kit.queue()
    runs: list[int] = []

    async def process(job: Job, token: str) -> str:
        runs.append(job.attemptsMade)
        if len(runs) == 1:
            await job.moveToDelayed(now_ms() + 300, token)
            raise DelayedError()
        return "later"

    kit.worker(process)
    job = await queue.add("test", {})
    await until(state_is(queue, job.id, "delayed", "completed"), what="job delayed")
    done = await wait_state(queue, job.id, "completed")
    assert done.returnvalue == "later" and len(runs) == 2
    events = ["added", "waiting", "active", "delayed", "waiting", "active", "completed"]
    assert events_of(sync_redis, kit, job.id) == events, "the second run came out of delayed"


async def test_retry_of_failed_and_completed_jobs(kit: Kit) -> None:
    queue = kit.queue()
    fail = True

    async def process(job: Job, token: str) -> str:
        if fail:
            raise Exception("Not even!")
        return "done"

    kit.worker(process)
    job = await queue.add("test", {"foo": "bar"})
    failed = await wait_state(queue, job.id, "failed")
    assert (failed.attemptsStarted, failed.attemptsMade) == (1, 1)
    fail = False
    await failed.retry()
    done = await wait_state(queue, job.id, "completed")
    assert (done.attemptsStarted, done.attemptsMade, done.returnvalue) == (2, 2, "done")
    await done.retry("completed", {"resetAttemptsMade": True, "resetAttemptsStarted": True})
    await until(state_is(queue, job.id, "wait", "active", "completed"), what="retried")
    done = await wait_state(queue, job.id, "completed")
    assert (done.attemptsStarted, done.attemptsMade) == (1, 1)


# --- order and parallelism ----------------------------------------------------------


async def test_priorities_are_processed_in_order(kit: Kit) -> None:
    queue = kit.queue()
    order: list[str] = []
    for name, opts in (("p5", {"priority": 5}), ("p1", {"priority": 1}), ("none", {}), ("p3", {"priority": 3})):
        await queue.add(name, {}, opts)

    async def process(job: Job, token: str) -> None:
        order.append(job.name)

    kit.worker(process, concurrency=1)
    await until(lambda: len(order) == 4, what="4 jobs")
    assert order == ["none", "p1", "p3", "p5"], "no priority first (the wait list), then 1 upwards"


async def test_concurrency_runs_that_many_jobs_at_once(kit: Kit) -> None:
    queue = kit.queue()
    running = peak = finished = 0

    async def process(job: Job, token: str) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1
        finished += 1

    await queue.addBulk([{"name": "test", "data": {"i": i}} for i in range(12)])
    kit.worker(process, concurrency=4)
    await until(lambda: finished == 12, what="12 jobs")
    assert peak == 4


async def test_rate_limiter_spreads_jobs_over_its_windows(kit: Kit) -> None:
    queue = kit.queue()
    client = aioredis.Redis.from_url(kit.opts["connection"], decode_responses=True)
    # At each start, BullMQ's count of jobs started in the current window and what is left of it.
    seen: list[tuple[str | None, int]] = []

    async def process(job: Job, token: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            count, left = await pipe.get(f"{kit.prefix}:q:limiter").pttl(f"{kit.prefix}:q:limiter").execute()
        seen.append((count, left))

    await queue.addBulk([{"name": "test", "data": {"i": i}} for i in range(6)])
    kit.worker(process, concurrency=3, limiter={"max": 2, "duration": 300})
    try:
        await until(lambda: len(seen) == 6, what="6 jobs")
    finally:
        await client.aclose()
    # Concurrency 3 would start 3 at once: no window ever counted more than the limiter's 2.
    live = [int(count) for count, left in seen if count is not None and left > 0]
    assert live and max(live) <= 2, seen


# --- pause, close, stalled jobs -----------------------------------------------------


async def test_pause_waits_for_active_jobs_and_resume_continues(kit: Kit) -> None:
    queue = kit.queue()
    events: list[str] = []
    started = asyncio.Event()

    async def process(job: Job, token: str) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return job.name

    worker = kit.worker(process)
    worker.on("paused", lambda *a: events.append("paused"))
    worker.on("resumed", lambda *a: events.append("resumed"))
    first = await queue.add("first", {})
    await asyncio.wait_for(started.wait(), 10)
    await worker.pause()
    assert await queue.getJobState(first.id) == "completed", "pause() returns once active jobs finished"
    second = await queue.add("second", {})
    await asyncio.sleep(0.3)
    assert await queue.getJobState(second.id) == "waiting"
    worker.resume()
    await wait_state(queue, second.id, "completed")
    assert events == ["paused", "resumed"]


async def test_paused_queue_is_not_fetched_from(kit: Kit) -> None:
    queue = kit.queue()

    async def process(job: Job, token: str) -> None:
        return None

    kit.worker(process)
    await queue.pause()
    job = await queue.add("test", {})
    await asyncio.sleep(0.3)
    assert await queue.getJobState(job.id) == "waiting" and await queue.isPaused()
    await queue.resume()
    await wait_state(queue, job.id, "completed")


async def test_close_lets_active_jobs_finish_and_takes_no_more(kit: Kit) -> None:
    queue = kit.queue()
    started = asyncio.Event()
    closed: list[bool] = []

    async def process(job: Job, token: str) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    worker = kit.worker(process, concurrency=1)
    worker.on("closed", lambda *a: closed.append(True))
    first = await queue.add("first", {})
    second = await queue.add("second", {})
    await asyncio.wait_for(started.wait(), 10)
    await worker.close()
    assert worker.closed and closed == [True]
    assert (await Job.fromId(queue, first.id)).returnvalue == "finished"
    assert await queue.getJobState(second.id) == "waiting", "completing the last job fetched no other"


async def test_stalled_job_is_recovered_by_another_worker(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {"foo": "bar"})
    started = asyncio.Event()

    async def hangs(job: Job, token: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return "done1"

    first = kit.worker(hangs, lockDuration=1000)
    await asyncio.wait_for(started.wait(), 10)
    await first.close(force=True)  # as if its process died: the job stays active, its lock expires
    assert await queue.getJobState(job.id) == "active"

    async def process(job: Job, token: str) -> str:
        return "done2"

    stalled: list[str] = []
    second = kit.worker(process, lockDuration=1000, stalledInterval=500)
    second.on("stalled", lambda job_id, *a: stalled.append(job_id))
    done = await wait_state(queue, job.id, "completed")
    assert done.returnvalue == "done2" and done.attemptsMade == 1 and stalled == [job.id]


async def test_job_that_stalls_too_often_fails(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {})
    started = asyncio.Event()

    async def hangs(job: Job, token: str) -> None:
        started.set()
        await asyncio.sleep(30)

    first = kit.worker(hangs, lockDuration=500)
    await asyncio.wait_for(started.wait(), 10)
    await first.close(force=True)
    kit.worker(hangs, lockDuration=500, stalledInterval=300, maxStalledCount=0)
    failed = await wait_state(queue, job.id, "failed")
    assert "stalled more than allowable limit" in failed.failedReason


async def test_lock_is_renewed_while_a_long_job_runs(kit: Kit) -> None:
    queue = kit.queue()
    job = await queue.add("test-job", {})
    stalled: list[str] = []

    async def process(job: Job, token: str) -> str:
        await asyncio.sleep(2.2)  # more than two lock durations
        return "done"

    worker = kit.worker(process, lockDuration=1000, stalledInterval=500)
    worker.on("stalled", lambda job_id, *a: stalled.append(job_id))
    done = await wait_state(queue, job.id, "completed")
    assert done.returnvalue == "done" and done.attemptsMade == 1 and stalled == []
    await until(lambda: not worker.lockManager.get_tracked_job_ids(), what="lock untracked")


async def test_cancel_job_aborts_the_processors_signal(kit: Kit) -> None:
    queue = kit.queue()
    started = asyncio.Event()

    async def process(job: Job, token: str, signal: Any) -> str:
        started.set()
        await asyncio.wait_for(signal.wait(), 10)
        raise UnrecoverableError(f"aborted: {signal.reason}")

    worker = kit.worker(process)
    job = await queue.add("cancellable", {})
    await asyncio.wait_for(started.wait(), 10)
    assert worker.cancelJob(job.id, "user requested") is True
    assert worker.cancelJob("no-such-job") is False
    failed = await wait_state(queue, job.id, "failed")
    assert "aborted: user requested" in failed.failedReason


# --- retention ----------------------------------------------------------------------


async def test_worker_removal_options_apply_unless_the_job_has_its_own(kit: Kit, sync_redis: redis.Redis) -> None:
    queue = kit.queue()

    async def process(job: Job, token: str) -> None:
        if job.name == "fail":
            raise Exception("no")

    kit.worker(process, removeOnComplete=True, removeOnFail={"count": 1})
    gone = await queue.add("ok", {})
    kept = await queue.add("ok", {}, {"removeOnComplete": False})
    fails = [await queue.add("fail", {}) for _ in range(3)]
    await wait_state(queue, kept.id, "completed")
    await wait_state(queue, fails[-1].id, "failed")  # the last job: retention has been applied to all
    assert not sync_redis.exists(f"{kit.prefix}:q:{gone.id}")
    assert await queue.getJobCounts("completed", "failed") == {"completed": 1, "failed": 1}
    assert [j.id for j in await queue.getFailed()] == [fails[-1].id], "the newest failed job is kept"


# --- flows, schedulers, events ------------------------------------------------------


async def test_flow_parent_runs_after_its_children_with_their_values(kit: Kit, settings: Settings) -> None:
    parents = kit.queue("parents")

    async def child(job: Job, token: str) -> Any:
        return {"idx": job.data["idx"]}

    async def parent(job: Job, token: str) -> Any:
        return sorted(value["idx"] for value in (await job.getChildrenValues()).values())

    kit.worker(child, "children", concurrency=3)
    kit.worker(parent, "parents")
    flow = FlowProducer(dict(kit.opts))
    kit.closables.append(flow)
    tree = await flow.add(
        {
            "name": "parent",
            "queueName": "parents",
            "data": {},
            "children": [{"name": "child", "queueName": "children", "data": {"idx": i}} for i in range(3)],
        }
    )
    done = await wait_state(parents, tree["job"].id, "completed")
    assert done.returnvalue == [0, 1, 2]


async def test_failing_child_fails_its_parent_with_fail_parent_on_failure(kit: Kit, settings: Settings) -> None:
    parents = kit.queue("parents")

    async def child(job: Job, token: str) -> None:
        raise Exception("Child job failed")

    async def parent(job: Job, token: str) -> int:
        return 1

    kit.worker(child, "children")
    kit.worker(parent, "parents")
    flow = FlowProducer(dict(kit.opts))
    kit.closables.append(flow)
    tree = await flow.add(
        {
            "name": "parent",
            "queueName": "parents",
            "data": {},
            "children": [{"name": "child", "queueName": "children", "data": {}, "opts": {"failParentOnFailure": True}}],
        }
    )
    failed = await wait_state(parents, tree["job"].id, "failed")
    assert failed.failedReason


async def test_children_added_at_runtime_with_waiting_children(kit: Kit) -> None:
    parents, children = kit.queue("parents"), kit.queue("children")
    waits = 0

    async def parent(job: Job, token: str) -> str:
        nonlocal waits
        if job.data.get("step") == "start":
            for i in range(2):
                await children.add("child", {"i": i}, {"parent": {"id": job.id, "queue": job.queueQualifiedName}})
            await job.updateData({"step": "wait"})
        waits += 1
        if await job.moveToWaitingChildren(token, {}):
            raise WaitingChildrenError()
        return "all children done"

    async def child(job: Job, token: str) -> None:
        await asyncio.sleep(0.1)

    kit.worker(parent, "parents")
    kit.worker(child, "children")
    job = await parents.add("parent", {"step": "start"})
    done = await wait_state(parents, job.id, "completed")
    assert done.returnvalue == "all children done" and waits == 2


async def test_job_scheduler_iterations_keep_coming(kit: Kit) -> None:
    queue = kit.queue()
    processed: list[str] = []

    async def process(job: Job, token: str) -> None:
        processed.append(job.id)

    await queue.upsertJobScheduler("tick", {"every": 150}, job_name="tick")
    kit.worker(process)
    await until(lambda: len(processed) >= 3, what="3 iterations")
    assert len(set(processed)) == len(processed) and all(i.startswith("repeat:tick:") for i in processed)
    assert (await queue.getJobScheduler("tick"))["iterationCount"] > 1


async def test_events_reach_worker_listeners_and_queue_events(kit: Kit, settings: Settings) -> None:
    queue = kit.queue()
    events = QueueEvents("q", {"connection": settings.redis_url, "prefix": kit.prefix, "lastEventId": "0"})
    kit.closables.append(events)
    completed_event: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    events.on("completed", lambda args, _id: completed_event.done() or completed_event.set_result(args))
    seen: list[str] = []

    async def process(job: Job, token: str) -> Any:
        return {"answer": 42}

    worker = kit.worker(process)
    worker.on("active", lambda job, prev: seen.append(f"active:{prev}"))
    worker.on("completed", lambda job, result: seen.append(f"completed:{result['answer']}"))
    job = await queue.add("done", {})
    args = await asyncio.wait_for(completed_event, 10)
    assert args["jobId"] == job.id and args["returnvalue"] == {"answer": 42}
    # The queue event may arrive before the worker resumes after the completing call.
    await eventually(lambda: len(seen) == 2, 5, "the worker's completed listener")
    assert seen == ["active:waiting", "completed:42"]


# --- connections, and what differs ----------------------------------------------------


async def test_shared_client_as_connection(kit: Kit, settings: Settings) -> None:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    queue = Queue("shared", {"connection": client, "prefix": kit.prefix})
    job = await queue.add("test-job", {"foo": "bar"})

    async def process(job: Job, token: str) -> str:
        return "done"

    worker = Worker("shared", process, {"connection": client, "prefix": kit.prefix})
    try:
        done = await wait_state(queue, job.id, "completed")
        assert done.returnvalue == "done"
    finally:
        await worker.close()
        await queue.close()
        await client.aclose()


async def test_connections_are_named_for_python_and_node(kit: Kit, sync_redis: redis.Redis) -> None:
    queue = kit.queue("emails")
    worker = kit.worker(lambda job, token: asyncio.sleep(0), "emails", name="mailer")
    await until(lambda: worker.running, what="worker running")
    names = {c["name"] for c in sync_redis.client_list() if c["name"].startswith(kit.prefix)}
    # bullmq-py's name on the main connection (its get_workers() matches it), Node's on the
    # blocking one (Node's getWorkers() and Bull Board match base64 of the queue name).
    assert names >= {f"{kit.prefix}:emails:w:mailer", f"{kit.prefix}:ZW1haWxz:w:mailer"}
    assert [w["rawname"] for w in await queue.get_workers()] == [f"{kit.prefix}:emails:w:mailer"]


def test_postgres_backend_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Redis only.*bullmq\.Worker"):
        Worker("q", None, {"backend": "postgres", "autorun": False})
