"""`BullwaitWorker`: the official bullmq-py Worker with the fixes bullwait needs.

1. Timer precision. A stock Worker blocks on the marker with `BZPOPMIN` for a timeout
   rounded *up* to whole seconds until something asks the server's version (which sets
   `canDoubleTimeout`); nothing in the worker does, so delayed jobs run ~0.5 s late on
   average and ~1 s at p99. We read the server version before the first wait, so the
   wait ends at the next due time, as in Node. That still leaves Redis's own timer
   resolution: Redis expires blocked clients from its event loop, which wakes `hz` times
   a second (10 by default), so a wait ends up to 100 ms late (Node's workers too).
   So we block in Redis only until `PRECISE_WAIT_MS` before the next due time and sleep
   the rest in the event loop, whose timers are ~1 ms accurate. The price: a job added
   to the wait list during that last stretch waits for it (at most `PRECISE_WAIT_MS`).
2. Visibility. bullmq-py names its connections `bull:<queue>:w:<name>`; Node's
   `getWorkers()` and Bull Board look for `bull:<base64(queue)>:w:<name>`. The main
   connection keeps the Python name (bullmq-py's `get_workers()` still sees us) and the
   blocking connection takes the Node name (Node and Bull Board see us).
3. Round trips. A stock Worker completes a job with `moveToFinished(fetchNext=false)` and
   then asks for the next one with a separate `moveToActive`: two Lua calls per job. Like
   Node, we let `moveToFinished` fetch the next job in the same call and process it in
   the same slot (same token, locks tracked and released per job, `active`/`completed`
   events as before). We stop fetching as soon as the worker is closing or paused, so a
   graceful close still drains; a failed, delayed or rate-limited job ends the chain and
   the slot goes back to the stock loop.
4. Rate limiter. When BullMQ's `limiter` refuses a job, `moveToActive` returns how
   long until the window reopens; Node waits that long and asks again. bullmq-py 3.4.4
   stores it (`limitUntil`) but then blocks on the marker, which nothing re-adds, for
   the 5 s drain delay: 30 jobs at max 5/s took 25 s instead of 5 s (and stalled
   outright, 5 jobs in 60 s, under redis-py 8's 5 s read timeout, see 6.).
   We wait the limit out and ask again, as Node does: 5.0 s.
5. Poison jobs. A job hash bullmq-py cannot read (data not JSON, `delay: "abc"`, `opts` an
   array, bytes that are not UTF-8) made it raise while fetching; one it cannot fail
   (`attempts: "3"`, Infinity) made `moveToFailed` raise: either way the job stayed
   active, stalled, came back and did it again for ever. A job it cannot read fails at
   once, unrecoverably, naming the fields (its hash stays as it was); a failing job's
   options are checked (`bullwait.engine.jobcheck`) and the job fails once if they are invalid.
   The worker's connections read undecodable bytes as surrogate escapes rather than
   raising (one bad reply on the shared completion connection used to fail every call
   written with it), and write them back as the same bytes, so the job's own keys work.
6. Blocking reads. redis-py 8 gives every connection a 5 s `socket_timeout`, and the
   worker blocks on `BZPOPMIN` for up to 5 s (drainDelay) or 10 s (waiting for the next
   delayed job). The read then times out, redis-py retries with exponential backoff (up
   to 20 s between tries) and the worker sleeps through due timers and new jobs: an idle
   worker noticed a job added 6 s after it went idle only after tens of seconds, and never
   noticed delayed jobs from a Node bullmq 4.x producer (which writes no wake-up marker).
   The blocking connection's read timeout is raised above the longest block.
7. One connection for completions. Each `moveToFinished` went through redis-py's pool:
   a connection, a write and a read per job, and Redis served up to `concurrency`
   sockets one command each. Completions now go through `bullwait.engine.autopipeline`: one
   connection, calls written together, replies read in order (as Node's ioredis does).
   No-op jobs at concurrency 10 on 2 cores: ~1,000 -> ~4,500 jobs/s (about Node's), and
   Redis spends ~130-146 us per job instead of ~250.
8. Stopping while the BZPOPMIN leaves. `close()` stops an idle worker by cancelling its
   BZPOPMIN. redis-py sends each command through `asyncio.wait_for`, which on Python 3.11
   swallows a cancellation arriving in the loop turn the send completes in: the wait then
   ran its whole block (5-10 s) before close() could finish; a stock Worker (5 s read
   timeout on a 5 s block) re-sent it after each read timeout for minutes. Stopping workers
   (concurrency 50) right after their queue drained, as the benchmark does, hit it about
   once in 6-10 stops. The blocking connection raises such a cancellation again
   (`keep_cancellations`).
9. Fetches whose reply was lost. redis-py sends a call again when its reply is lost, and a
   fetch sent twice moves two jobs to active: the first then waited out its lock and the
   stalled check (a minute) and counted as stalled. `bullwait.engine.orphans` gives such jobs
   back to the queue within seconds.
10. A client instance as connection (Redis Sentinel). bullmq-py wraps a client it is given
   in both the main and the blocking connection, so the BZPOPMIN would share the main
   connection and its name: the `blockingConnection` option gives the blocking one its own
   client (`connection.use_blocking_client`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import time
from typing import Any

from bullmq import Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError, WaitingChildrenError
from bullmq.job import Job
from bullmq.scripts import raw2NextJobData

from bullwait.engine.autopipeline import AutoPipeline
from bullwait.engine.completion import CompletionCalls
from bullwait.engine.connection import bound_blocking_reads, keep_cancellations, keep_client_name, use_blocking_client
from bullwait.engine.orphans import OrphanSweeper
from bullwait.engine.jobcheck import (
    bare_hash,
    hash_problems,
    non_utf8_fields,
    option_problems,
    printable,
    readable_hash,
    repairs,
    shown,
)


def default_worker_name() -> str:
    """`bullwait-<host>-<pid>`: unique per process, readable in CLIENT LIST and Bull Board."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"bullwait-{host}-{os.getpid()}"


def node_client_name(prefix: str, queue: str, worker_name: str | None) -> str:
    """The connection name Node bullmq gives a worker, which `Queue.getWorkers()` matches."""
    encoded = base64.b64encode(queue.encode()).decode()
    return f"{prefix}:{encoded}" + (f":w:{worker_name}" if worker_name else "")


# Longer than Redis's blocked-client timeout granularity at the default hz 10 (100 ms).
PRECISE_WAIT_MS = 110


class BullwaitWorker(Worker):
    """A bullmq Worker that is on time, visible to Node, honours its limiter, and is robust
    to undecodable data."""

    def __init__(self, name: str, processor: Any = None, opts: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
        opts = dict(opts or {})
        if opts.get("backend", "redis") != "redis":
            raise ValueError(f"bullwait.Worker runs on Redis only, not backend={opts['backend']!r}: use bullmq.Worker for it")
        blocking = opts.pop("blockingConnection", None)
        super().__init__(name, processor, _escaping_undecodable(opts), *args, **kwargs)
        if blocking is not None:
            use_blocking_client(self, blocking)
        _escape_undecodable(self.backend.connection.conn)
        _escape_undecodable(self.backend.blocking_connection.conn)
        self._allow_long_blocking_reads()
        keep_cancellations(self.backend.blocking_connection)  # see 8.
        self.pipeline = AutoPipeline(self.backend.connection.conn)
        self._completions: CompletionCalls | None = None  # built on first use (scripts are loaded by then)
        self.orphans = OrphanSweeper(self)  # see 9.

    def _allow_long_blocking_reads(self) -> None:
        """Give the blocking connection a read timeout longer than any BZPOPMIN it sends."""
        longest = max(float(self.maximumBlockTimeout), float(self.opts.get("drainDelay", 5)))
        bound_blocking_reads(getattr(self.backend, "blocking_connection", None), longest)

    def blocking_read_timeout(self) -> float | None:
        conn = getattr(self.backend, "blocking_connection", None)
        pool = getattr(getattr(conn, "conn", None), "connection_pool", None)
        return getattr(pool, "connection_kwargs", {}).get("socket_timeout")

    async def run(self) -> None:  # type: ignore[override]
        await self.prime()
        self.orphans.start()
        try:
            await super().run()
        finally:
            await self.orphans.stop()

    async def moveToActive(self, token: str) -> Job | None:  # type: ignore[override]
        """bullmq's fetch, counted by the orphan sweeper until its job is registered (see 9.)."""
        self.orphans.fetch_started(token)
        job = None
        try:
            job = await super().moveToActive(token)
        finally:
            self.orphans.fetch_ended(token, job.id if job is not None else None)
        return job

    async def prime(self) -> None:
        """Learn the server's capabilities (1 ms and fractional blocking timeouts)."""
        for conn in (self.backend.connection, self.backend.blocking_connection):
            if conn is not None:
                await conn.getRedisVersion()

    async def waitForJob(self) -> int:  # type: ignore[override]
        """Wait for the marker; the last `PRECISE_WAIT_MS` before a due time in the event loop."""
        if self.closing or self.paused:
            # close()/pause() cancel the wait in progress; a fetch the worker loop started
            # before them must not begin another (bullmq's getNextJob ends on this).
            raise asyncio.CancelledError()
        now = time.time() * 1000
        if self.blockUntil and self.blockUntil - now <= PRECISE_WAIT_MS:
            if self.blockUntil > now:
                await asyncio.sleep((self.blockUntil - now) / 1000)
            return 0
        until = self.blockUntil - PRECISE_WAIT_MS if self.blockUntil else 0
        timeout = self.getBlockTimeout(int(until))
        if not self.backend.capabilities.get("canDoubleTimeout", False):
            timeout = math.ceil(timeout)
        try:
            result = await self.backend.waitForJob(timeout)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            if self.isConnectionError(err) and not self.closing and not self.closed:
                await asyncio.sleep(0.1)
            raise
        if result:
            _key, member, score = result
            return int(score) if member else 0
        return 0

    async def _ensure_client_names(self) -> None:
        if self._client_name_set:
            return
        python_name = self.clientName
        node_name = node_client_name(self.prefix, self.name, self.workerName)
        # Names kept on the connections themselves survive reconnects (see keep_client_name).
        keep_client_name(self.backend.connection, python_name)
        await self.backend.connection.set_client_name(python_name)
        if self.backend.blocking_connection is not None:
            keep_client_name(self.backend.blocking_connection, node_name)
            await self.backend.blocking_connection.set_client_name(node_name)
        self._client_name_set = True

    async def processJob(self, job: Job, token: str) -> None:  # type: ignore[override]
        """Process `job`, then each job that completing it fetched, in this slot."""
        current: Job | None = job
        while current is not None:
            try:
                following = await self._process_one(current, token)
            finally:
                self.orphans.released(current.id, token)
            current = following

    async def getNextJob(self, token: str) -> Job | None:  # type: ignore[override]
        if self.limitUntil <= 0 or self.closing:
            return await super().getNextJob(token)
        # Rate limited: `limitUntil` is the limiter key's TTL in ms (see moveToActive).
        wait, self.limitUntil = self.limitUntil, 0
        await asyncio.sleep(wait / 1000)
        if self.closing or self.paused:
            return None
        job = await self.moveToActive(token)
        if job is not None:
            self.emit("active", job, "waiting")
        return job

    def _may_fetch_next(self) -> bool:
        return not (self.closing or self.paused or self.forceClosing or self.closed)

    async def _process_one(self, job: Job, token: str) -> Job | None:
        """bullmq-py's `processJob` for one job; returns the next job if completing fetched one."""
        following: Job | None = None
        try:
            if "removeOnComplete" not in job.opts and "removeOnComplete" in self.opts:
                job.opts["removeOnComplete"] = self.opts["removeOnComplete"]
            if "removeOnFail" not in job.opts and "removeOnFail" in self.opts:
                job.opts["removeOnFail"] = self.opts["removeOnFail"]
            if job.deferredFailure:  # before its lock is renewed: an undecodable id cannot be sent in a batch
                await self._fail(job, UnrecoverableError(job.deferredFailure), token)
                return None
            self.jobs.add((job, token))
            controller = self.lockManager.track_job(
                job.id, token, int(time.time() * 1000), should_create_controller=self._processor_wants_signal
            )
            if controller is not None:
                result = await self.processor(job, token, controller.signal)
            else:
                result = await self.processor(job, token)
            if not self.forceClosing:
                following = await self._complete(job, result, token, self._may_fetch_next())
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return None
        except Exception as err:
            try:
                if not self.forceClosing:
                    await self._fail(job, err, token)
                else:
                    self.emit("failed", job, err)
            except Exception as err2:
                self.emit("error", err2, job)
            return None
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
        if following is not None:
            self.emit("active", following, "waiting")
        return following

    async def _complete(self, job: Job, result: Any, token: str, fetch: bool) -> Job | None:
        """Complete `job`; with `fetch`, the job that the same call moved to active, counted
        as a fetch under way (see 9.) until it is built or known to be lost."""
        if not fetch:
            await self._move_to_completed(job, result, token, False)
            return None
        self.orphans.fetch_started(token)
        following: Job | None = None
        try:
            fetched = await self._move_to_completed(job, result, token, True)
            if fetched:
                following = await self._following(fetched, token)
        finally:
            self.orphans.fetch_ended(token, following.id if following is not None else None)
        return following

    async def _following(self, fetched: Any, token: str) -> Job | None:
        job_data, job_id, limit_until, delay_until = fetched
        try:
            return await self.nextJobFromJobData(job_data, job_id, limit_until or 0, delay_until or 0, token)
        except Exception as err:  # the fetched job is held by nobody: the orphan sweeper gives it back
            self.emit("error", err)
            return None

    async def _fail(self, job: Job, err: Exception, token: str) -> None:
        """bullmq's `moveToFailed`, once the job's options are known to be usable.

        Only failing jobs pay for the check. Options no retry decision can be made from
        fail the job now, unrecoverably, with a reason naming them (see `jobcheck`)."""
        problems = option_problems(job)
        if not problems and not job.deferredFailure:
            await job.moveToFailed(err, token)
            self.emit("failed", job, err)
            return
        if problems:
            invalid = "invalid job options: " + "; ".join(problems)
            if isinstance(err, UnrecoverableError):
                err = UnrecoverableError(f"{err}; {invalid}")
            else:
                err = UnrecoverableError(f"{invalid[0].upper()}{invalid[1:]}; not retried. It failed with: {err}")
        await self._fail_for_good(job, err, token)
        self.emit("poison", printable(str(job.id)), str(err))  # no processor logged it: see runner
        self.emit("failed", job, err)

    async def _fail_for_good(self, job: Job, err: Exception, token: str) -> None:
        """bullmq's `moveToFailed` without a retry decision; also rewrites the counters its
        script increments if they were not numbers (`repairs`), or the script stops half-way."""
        reason = printable(str(err))
        job.failedReason = reason
        if err.__traceback__ is not None:
            job.updateStacktrace()
        fields = {
            "failedReason": reason,
            "stacktrace": json.dumps([printable(str(t)) for t in job.stacktrace], separators=(",", ":")),
            **getattr(job, "repairs", {}),
        }
        keep = job.opts.get("removeOnFail", False)
        await self.backend.moveToFailed(job, reason, keep, token, False, fields)
        job.attemptsMade += 1

    async def _move_to_completed(self, job: Job, result: Any, token: str, fetch: bool) -> Any:
        """bullmq's `moveToFinished` script, packed by `CompletionCalls` and sent through the auto-pipeline (see 7.)."""
        if self._completions is None:
            self._completions = CompletionCalls(self)
        keys, args, packed = self._completions.build(job, result, token, fetch)
        raw = await self.pipeline.run_script(self._completions.script, keys, args, packed=packed)
        if isinstance(raw, int) and raw < 0:
            raise self.backend.scripts.finishedErrors({"code": raw, "jobId": job.id, "command": "moveToFinished", "state": "active"})
        return raw2NextJobData(raw) if raw is not None else None

    async def close(self, force: bool = False) -> None:  # type: ignore[override]
        try:
            await super().close(force)
        finally:
            await self.pipeline.close()

    async def nextJobFromJobData(  # type: ignore[override]
        self,
        job_data: Any = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Job | None:
        try:
            job = await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        except Exception as err:  # anything: a job left active here would stall and come back for ever
            if not job_data or not isinstance(job_data, dict):
                raise
            # Decoding only fails for a bad hash: look for the cause then, not for every job (hot path).
            unknown = f"bullmq-py cannot read it ({shown(f'{type(err).__name__}: {err}')})"
            problems = hash_problems(job_data, job_id) or [unknown]
            fixed = readable_hash(job_data, problems)
            try:
                job = await super().nextJobFromJobData(fixed, job_id, limit_until, delay_until, token)
            except Exception:  # an option bullmq-py reads while building the Job (`parent`, ...)
                job = await super().nextJobFromJobData(bare_hash(fixed), job_id, limit_until, delay_until, token)
            if job is not None:
                job.repairs = repairs(problems)
            return job
        if job is None or not isinstance(job_data, dict):
            return job
        # isascii() reads a flag, so an ASCII job is checked without encoding anything (hot path).
        if all(map(_isascii, job_data.values())) and (job_id is None or job_id.isascii()):
            job.raw_data_size = len(job_data.get("data") or "")  # ASCII: characters are bytes
        else:
            _check_utf8(job, job_data, job_id)
        return job


_isascii = str.isascii


def _check_utf8(job: Job, job_data: dict[str, Any], job_id: Any) -> None:
    """Size the data in bytes; a job with fields that are not UTF-8 is marked to fail at once."""
    bad = non_utf8_fields(job_data, job_id)
    if not bad:
        job.raw_data_size = len((job_data.get("data") or "").encode())
        return
    job.raw_data_size = 0
    job.deferredFailure = (
        "Invalid job data: " + "; ".join(f"{name} is not valid UTF-8" for name in bad) + " (left unchanged in Redis)"
    )
    job.data = {}
    job.name = printable(job.name) if isinstance(job.name, str) else ""


def _escaping_undecodable(opts: dict[str, Any]) -> dict[str, Any]:
    """Worker options whose connections read bytes that are not UTF-8 as surrogate escapes."""
    connection = opts.get("connection")
    if isinstance(connection, dict) and connection.get("decode_responses", True):
        opts = {**opts, "connection": {**connection, "encoding_errors": "surrogateescape"}}
    return opts


def _escape_undecodable(client: Any) -> None:
    """The same for a client passed in (its connections are made on first use)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if isinstance(kwargs, dict) and kwargs.get("decode_responses"):
        kwargs["encoding_errors"] = "surrogateescape"
