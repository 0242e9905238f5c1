"""`BullwaitWorker`: the official bullmq-py `Worker`, on time, visible to Node, fast and robust
to jobs it cannot read.

What it changes in the official client, and why, with measurements: docs/performance.md
("What bullwait changes in the official client, and why"). In short: timers end on time
(fractional blocking timeouts, the last stretch slept in the event loop), Node and Bull
Board see the worker, completing a job fetches the next one in the same call, completions
share one pipelined connection, the limiter is waited out as in Node, jobs bullmq-py
cannot read or fail fail once instead of stalling for ever, blocking reads outlast their
block and are cancellable, and jobs fetched by a call whose reply was lost go back to the
queue. Each method below says which of these it carries out.

Every use of bullmq-py's or redis-py's internals is in `bullwait.engine.internals`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from typing import Any

from bullmq import Job, UnrecoverableError, Worker
from redis.exceptions import ResponseError

from bullwait.engine import internals
from bullwait.engine.autopipeline import AutoPipeline
from bullwait.engine.completion import CompletionCalls
from bullwait.engine.connection import bound_blocking_reads, keep_cancellations
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
from bullwait.engine.orphans import OrphanSweeper


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
# Redis's answer to a blocked client whose node turned replica ("UNBLOCKED force unblock ...").
UNBLOCKED = "UNBLOCKED"


class BullwaitWorker(Worker):  # type: ignore[misc]  # bullmq-py ships no type information
    """A bullmq Worker that is on time, visible to Node, honours its limiter, and is robust
    to undecodable data.

    It overrides these bullmq `Worker` methods, each a wrapper around bullmq's own except
    `processJob` (see `internals.process_job`): `run`, `close`, `getNextJob`, `moveToActive`,
    `waitForJob`, `nextJobFromJobData`. `internals.check_compatibility` checks they exist."""

    # bullmq's Worker sets these (ms timestamps); declared for the type checker.
    blockUntil: int
    limitUntil: int

    def __init__(
        self, name: str, processor: Any = None, opts: dict[str, Any] | None = None, *args: Any, **kwargs: Any
    ) -> None:
        opts = dict(opts or {})
        if opts.get("backend", "redis") != "redis":
            raise ValueError(
                f"bullwait.Worker runs on Redis only, not backend={opts['backend']!r}: use bullmq.Worker for it"
            )
        blocking = opts.pop("blockingConnection", None)
        super().__init__(name, processor, _escaping_undecodable(opts), *args, **kwargs)
        if blocking is not None:  # a client instance (Sentinel) was given: the BZPOPMIN gets its own
            internals.use_blocking_client(self, blocking)
        # Bytes that are not UTF-8 are read as surrogate escapes, not raised: one bad reply on a
        # shared connection failed every call on it. They are written back as the same bytes.
        for connection in internals.bullmq_connections(self):
            internals.escape_undecodable(connection)
        self._allow_long_blocking_reads()
        # close() cancels the BZPOPMIN; redis-py's send may swallow that cancellation.
        keep_cancellations(self._blocking_connection())
        # Completions travel together on one connection, as with Node's ioredis.
        # With Redis Cluster, on a connection to the master of the queue's slot.
        queue_key = internals.scripts_of(self).key("wait")
        self.pipeline = AutoPipeline(internals.main_client(self), key=queue_key)
        self._completions: CompletionCalls | None = None  # built on first use (scripts are loaded by then)
        # A fetch sent twice (its reply lost) leaves a job active under our token: given back.
        self.orphans = OrphanSweeper(self)
        self._job_builder = internals.JobBuilder(self)
        # Since when (monotonic) every fetch and completion has failed; None while they succeed.
        self.failing_since: float | None = None
        self.last_failure = ""

    def failing_for(self) -> float:
        """Seconds the worker loop has been failing without a single success (0 when it works)."""
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    def _loop_failed(self, err: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_failure = f"{type(err).__name__}: {err}"[:300]

    def _loop_ok(self) -> None:
        self.failing_since = None

    def _blocking_connection(self) -> Any:
        connections = internals.bullmq_connections(self)
        return connections[1] if len(connections) > 1 else None

    def _allow_long_blocking_reads(self) -> None:
        """Give the blocking connection a read timeout longer than any BZPOPMIN it sends:
        redis-py 8's default 5 s ended 5-10 s blocks early, and its retries slept through due timers."""
        longest = max(float(self.maximumBlockTimeout), float(self.opts.get("drainDelay", 5)))
        bound_blocking_reads(self._blocking_connection(), longest)

    def blocking_read_timeout(self) -> float | None:
        kwargs = internals.pool_kwargs(self._blocking_connection()) or {}
        timeout = kwargs.get("socket_timeout")
        return float(timeout) if timeout is not None else None

    async def run(self) -> None:
        await self.prime()
        # The main connection keeps bullmq-py's name (its `get_workers()` sees us), the
        # blocking one takes Node's (Node's `getWorkers()` and Bull Board see us).
        await internals.name_worker_connections(
            self, self.clientName, node_client_name(self.prefix, self.name, self.workerName)
        )
        self.orphans.start()
        try:
            await super().run()
        finally:
            await self.orphans.stop()

    async def prime(self) -> None:
        """Learn the server's capabilities (1 ms and fractional blocking timeouts): a stock
        Worker rounds its wait up to whole seconds until something asks."""
        await internals.learn_server_version(self)

    async def moveToActive(self, token: str) -> Job | None:
        """bullmq's fetch, counted by the orphan sweeper until its job is registered."""
        self.orphans.fetch_started(token)
        job = None
        try:
            job = await super().moveToActive(token)
        finally:
            self.orphans.fetch_ended(token, job.id if job is not None else None)
        return job

    async def waitForJob(self) -> int:
        """bullmq's wait for the marker, ended `PRECISE_WAIT_MS` before the next due time; the
        rest is slept in the event loop, whose timers are ~1 ms accurate (Redis ends a block
        from its own event loop, `hz` times a second). A job added in that last stretch waits
        for it."""
        if self.closing or self.paused:
            # close()/pause() cancel the wait in progress; a fetch the worker loop started
            # before them must not begin another (bullmq's getNextJob ends on this).
            raise asyncio.CancelledError()
        due = int(self.blockUntil or 0)
        now = time.time() * 1000
        if due and due - now <= PRECISE_WAIT_MS:
            if due > now:
                await asyncio.sleep((due - now) / 1000)
            return 0
        early = due - PRECISE_WAIT_MS if due else 0
        self.blockUntil = early  # what bullmq's waitForJob computes its timeout from
        try:
            return int(await super().waitForJob())
        except ResponseError as err:
            if not str(err).startswith(UNBLOCKED):
                raise
            # The node stopped serving the queue's slot (a cluster failover made it a replica):
            # fetch now, on the client that follows MOVED, instead of an error and a retry delay.
            return 0
        finally:
            if self.blockUntil == early:  # unless a fetch meanwhile set a new due time
                self.blockUntil = due

    async def getNextJob(self, token: str) -> Job | None:
        """bullmq's fetch (see `_get_next_job`), its failures and successes counted: a loop that
        keeps failing, for whatever cause, is not live (`failing_for`, /health/live)."""
        try:
            job = await self._get_next_job(token)
        except Exception as err:
            self._loop_failed(err)
            raise
        self._loop_ok()
        return job

    async def _get_next_job(self, token: str) -> Job | None:
        """Rate limited: wait until the limiter's window reopens, then ask again, as Node does
        (bullmq-py would block on a marker nothing re-adds for the whole drain delay)."""
        if self.limitUntil <= 0 or self.closing:
            return await super().getNextJob(token)
        # `limitUntil` is the limiter key's TTL in ms, as moveToActive returned it.
        wait, self.limitUntil = self.limitUntil, 0
        await asyncio.sleep(wait / 1000)
        if self.closing or self.paused:
            return None
        job = await self.moveToActive(token)
        if job is not None:
            self.emit("active", job, "waiting")
        return job

    async def processJob(self, job: Job, token: str) -> None:
        """Process `job`, then each job that completing it fetched, in this slot (one Lua call
        per job instead of two, as in Node). A failed, delayed or rate-limited job ends the chain."""
        current: Job | None = job
        while current is not None:
            try:
                following = await internals.process_job(self, current, token, self._complete, self._fail)
            finally:
                self.orphans.released(current.id, token)
            if following is not None:
                self.emit("active", following, "waiting")
            current = following

    def _may_fetch_next(self) -> bool:
        return not (self.closing or self.paused or self.forceClosing or self.closed)

    async def _complete(self, job: Job, result: Any, token: str) -> Job | None:
        """Complete `job`; unless the worker is stopping, also fetch the next job in the same
        call, counted as a fetch under way until it is built or known to be lost."""
        if not self._may_fetch_next():
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
        await internals.fail_job(self, job, reason, job.opts.get("removeOnFail", False), token, fields)
        job.attemptsMade += 1

    async def _move_to_completed(self, job: Job, result: Any, token: str, fetch: bool) -> Any:
        """bullmq's `moveToFinished` script, packed by `CompletionCalls` and sent through the auto-pipeline."""
        if self._completions is None:
            self._completions = CompletionCalls(self)
        keys, args, packed = self._completions.build(job, result, token, fetch)
        try:
            raw = await self.pipeline.run_script(self._completions.script, keys, args, packed=packed)
        except Exception as err:  # completions that cannot be written are a failing loop too
            self._loop_failed(err)
            raise
        self._loop_ok()
        if isinstance(raw, int) and raw < 0:
            raise self._completions.scripts.error(raw, "moveToFinished", job.id, state="active")
        return internals.next_job_data(raw) if raw is not None else None

    async def close(self, force: bool = False) -> None:
        try:
            await super().close(force)
        finally:
            await self.pipeline.close()

    def abort(self) -> None:
        """Stop fetching and cancel the jobs in progress now; their locks expire and stalled-job
        recovery gives them back. For a shutdown whose grace period ran out: `close(force=True)`
        alone waits for them."""
        self.forceClosing = True
        self.cancelProcessing()

    async def nextJobFromJobData(
        self,
        job_data: Any = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Job | None:
        """bullmq's, for a job hash it cannot read too (data not JSON, `delay: "abc"`, bytes that
        are not UTF-8): that job fails at once, unrecoverably, naming its fields, instead of
        raising here, staying active, stalling and coming back for ever."""
        try:
            job = internals.fetched_job(self, self._job_builder, job_data, job_id, limit_until, delay_until, token)
            if job is None:
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
