"""Typed producer API: the NestJS module's usage examples, wire-compatible with NestJS producers.

async with Producer(load_settings()) as producer:
    await producer.schedule_expiry(ExpiryJob(...))          # jobId expiry_<waitlistId>
    await producer.send_slot_available(NotificationJob(...))
    await producer.queue_preferences(PreferenceJob(...))
    result = await producer.cancel_expiry_timer("w-42")
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from bullmq import Job, Queue
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)

from bullwait.engine.bulk import NewJob, add_jobs, now_ms, stored_opts
from bullwait.engine.cancel import cancel_waiting
from bullwait.engine.connection import (
    bound_retries,
    bullmq_connection,
    cluster_ready,
    cluster_redirect,
    credentials_refused,
    describe_redis,
    redis_client,
)
from bullwait.engine.durable import Durability, run_command
from bullwait.engine.internals import (
    add_job,
    bullmq_connections,
    main_client,
    script_source,
    scripts_of,
)
from bullwait.errors import BadArgument, RedisOutOfMemory, RedisUnavailable
from bullwait.logs import first_line
from bullwait.settings import Settings
from bullwait.waitlist.catalog import (
    EXPIRY_DELAY_MS,
    EXPIRY_JOB_ID_PREFIX,
    SPECS,
    Priority,
    QueueKey,
    queue_name,
)
from bullwait.waitlist.jobids import check_job_id
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, WireModel


@dataclass(frozen=True)
class CancelResult:
    """`outcome` is `cancelled`, `missing`, or the state that stopped it (`active`, ...)."""

    queue: str
    job_id: str
    outcome: str

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"


def stored_job(queue: Queue, name: str, payload: WireModel, opts: dict[str, Any]) -> Job:
    """The bullmq `Job` that `Queue.add` would build, with `jobId` given as the job's id
    and its options as `bullwait.engine.bulk.stored_opts` writes them (no `opts.jobId`, no
    `"delay":0`: see there), so single and bulk adds store the same thing."""
    options = {**queue.jobsOpts, **opts}
    job_id = options.get("jobId")
    job = Job(queue, name, payload.to_wire(), options, job_id=str(job_id) if job_id is not None else None)
    job.opts = stored_opts(options)
    return job


def new_job(queue: Queue, name: str, payload: WireModel, opts: dict[str, Any], timestamp: int) -> NewJob:
    """What `stored_job` stores, for `bullwait.engine.bulk.add_jobs` (no bullmq `Job` built)."""
    options = {**queue.jobsOpts, **opts} if queue.jobsOpts else opts
    job_id = options.get("jobId")
    if job_id is None:
        raise BadArgument(f"a bulk add needs a job id for every job ({name}): the producer's job_options() gives one")
    return NewJob(name, payload.to_wire_json(), stored_opts(options), str(job_id), options.get("timestamp", timestamp))


def expiry_job_id(waitlist_id: str) -> str:
    return f"{EXPIRY_JOB_ID_PREFIX}{waitlist_id}"


def new_expiry(
    waitlist_id: str, slot_id: str, customer_id: str, salon_id: str, delay_ms: int = EXPIRY_DELAY_MS
) -> ExpiryJob:
    """An `ExpiryJob` notified now and expiring `delay_ms` from now."""
    now = datetime.now(UTC)
    return ExpiryJob(
        waitlist_id=waitlist_id,
        slot_id=slot_id,
        customer_id=customer_id,
        salon_id=salon_id,
        notified_at=now,
        expires_at=now + timedelta(milliseconds=delay_ms),
    )


# Chunks of `add_bulk` sent before waiting for the first one's reply (Python packs one
# while Redis runs another).
IN_FLIGHT_CHUNKS = 3


class Producer:
    """Adds and cancels the waitlist jobs. One bullmq `Queue` per queue, opened lazily."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.durability = Durability.from_settings(settings)
        self._queues: dict[QueueKey, Queue] = {}
        self._redis: Any = None
        self._remove_script: Any = None

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def queue(self, key: QueueKey) -> Queue:
        if key not in self._queues:
            self._queues[key] = Queue(
                queue_name(key, self.settings),
                {"connection": bullmq_connection(self.settings), "prefix": self.settings.bullmq_prefix},
            )
            bound_retries(self.settings, *bullmq_connections(self._queues[key]))
        return self._queues[key]

    async def close(self) -> None:
        for q in self._queues.values():
            await q.close()
        self._queues.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def add(
        self,
        key: QueueKey,
        payload: WireModel,
        *,
        job_id: str | None = None,
        delay_ms: int | None = None,
        priority: Priority | None = None,
        **opts: Any,
    ) -> str:
        """Add one job with the catalog's default options; returns its id.

        Without `job_id` the producer gives the job a UUID: when Redis goes away after
        running an add but before replying, the retried add finds that id and adds
        nothing, where an id counted by Redis would have added the job twice.
        """
        options = self.job_options(key, job_id=job_id, delay_ms=delay_ms, priority=priority)
        options.update(opts)
        job = stored_job(self.queue(key), SPECS[key].job_name, payload, options)
        async with redis_errors(self.settings, "job not added"):
            await cluster_ready(job.queue)
            if self.durability.enabled:
                job.id = await self._add_durably(job)
            else:
                job.id = await add_job(job)
        return str(job.id)

    async def _add_durably(self, job: Job) -> str:
        """`addJob` followed by WAIT on its connection (`bullwait.engine.durable`); a repeat after
        a short WAIT adds nothing twice (same job id)."""
        scripts = scripts_of(job.queue)
        command, source = await scripts.add_job_command(job)  # bullmq builds the EVALSHA, we send it
        reply = await run_command(
            main_client(job.queue), self.durability, command, source, f"job {job.id} not added durably"
        )
        if isinstance(reply, int) and reply < 0:
            raise scripts.error(reply, "addJob", job.id, parent_key=job.parentKey)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def job_options(
        self, key: QueueKey, *, job_id: str | None = None, delay_ms: int | None = None, priority: Priority | None = None
    ) -> dict[str, Any]:
        """The catalog's default options for one job of `key`, as `add` writes them."""
        spec = SPECS[key]
        options: dict[str, Any] = spec.default_job_options()
        options.pop("priority", None)
        level = (priority or spec.priority).bullmq_priority
        if level:
            options["priority"] = level
        options["jobId"] = check_job_id(job_id, new=True) if job_id is not None else str(uuid.uuid4())
        if delay_ms:
            options["delay"] = int(delay_ms)
        return options

    async def add_bulk(
        self, key: QueueKey, jobs: Iterable[tuple[WireModel, dict[str, Any]]], chunk: int = 1000
    ) -> list[str]:
        """Add many jobs of `key`, each `(payload, options)`, one write per `chunk` jobs.

        Same wire format as `add` (and Node's `addBulk`): one round trip per chunk
        instead of one per job. `jobs` is read a chunk at a time (a generator of a
        million jobs is fine) and `IN_FLIGHT_CHUNKS` chunks are in flight at a time, so
        the next chunk is built while Redis runs the previous ones. A chunk runs as short
        MULTI/EXEC blocks (`bullwait.engine.bulk`), so Redis serves other clients between
        them; if one fails, jobs before it (and chunks in flight beside it) may have been
        added: adding them again with the same job ids adds nothing twice. Returns the
        job ids in order.
        """
        queue = self.queue(key)
        await cluster_ready(queue)
        name = SPECS[key].job_name
        ids: list[str] = []
        in_flight: deque[asyncio.Future[list[str]]] = deque()
        source = iter(jobs)
        try:
            while batch := list(islice(source, max(1, chunk))):
                in_flight.append(asyncio.ensure_future(self._add_chunk(queue, name, batch)))
                if len(in_flight) >= IN_FLIGHT_CHUNKS:
                    ids.extend(await in_flight.popleft())
            while in_flight:
                ids.extend(await in_flight.popleft())
        finally:
            for task in in_flight:
                task.cancel()
        return ids

    async def _add_chunk(self, queue: Queue, name: str, jobs: Sequence[tuple[WireModel, dict[str, Any]]]) -> list[str]:
        """One chunk as `Queue.addBulk` would add it (see `bullwait.engine.bulk` for how it travels)."""
        timestamp = now_ms()
        batch = [new_job(queue, name, payload, opts, timestamp) for payload, opts in jobs]
        async with redis_errors(self.settings, "jobs not added"):
            return await add_jobs(queue, batch, self.durability)

    async def schedule_expiries(self, payloads: Iterable[ExpiryJob], chunk: int = 1000) -> list[str]:
        """`schedule_expiry` for many timers at once (see `add_bulk`); each due at its `expiresAt`.

        `payloads` is read a chunk at a time: pass a generator to schedule more timers
        than fit in memory, or to build the next ones while Redis adds the first."""
        template = self.job_options(QueueKey.WAITLIST_EXPIRY)

        def jobs() -> Iterator[tuple[WireModel, dict[str, Any]]]:
            for payload in payloads:
                opts = template.copy()  # the same options as `schedule_expiry` writes, built once
                opts["jobId"] = check_job_id(expiry_job_id(payload.waitlist_id), new=True)
                delay_ms = int(payload.expires_at.timestamp() * 1000 - time.time() * 1000)
                if delay_ms > 0:
                    opts["delay"] = delay_ms
                yield payload, opts

        return await self.add_bulk(QueueKey.WAITLIST_EXPIRY, jobs(), chunk)

    async def schedule_expiry(self, payload: ExpiryJob, delay_ms: int | None = None) -> str:
        """The 15-minute offer timer, due at `expiresAt` (or after `delay_ms`).

        The job id is `expiry_<waitlistId>`, so scheduling twice keeps one job.
        """
        if delay_ms is None:
            delay_ms = max(0, int(payload.expires_at.timestamp() * 1000 - time.time() * 1000))
        return await self.add(
            QueueKey.WAITLIST_EXPIRY, payload, job_id=expiry_job_id(payload.waitlist_id), delay_ms=delay_ms
        )

    async def send_slot_available(
        self, payload: NotificationJob, priority: Priority = Priority.HIGH, job_id: str | None = None
    ) -> str:
        return await self.add(QueueKey.WAITLIST_NOTIFICATION, payload, job_id=job_id, priority=priority)

    async def queue_preferences(self, payload: PreferenceJob, priority: Priority = Priority.LOW) -> str:
        return await self.add(QueueKey.PREFERENCE_CALCULATION, payload, priority=priority)

    async def cancel_expiry_timer(self, waitlist_id: str) -> CancelResult:
        return await self.cancel_job(QueueKey.WAITLIST_EXPIRY, expiry_job_id(waitlist_id))

    async def cancel_job(self, key: QueueKey, job_id: str) -> CancelResult:
        """Remove a job only while it is waiting or delayed, atomically.

        See `bullwait.engine.cancel`: a worker taking the job meanwhile wins.
        """
        async with redis_errors(self.settings, "nothing cancelled"):
            return await self._cancel_job(key, job_id)

    async def _cancel_job(self, key: QueueKey, job_id: str) -> CancelResult:
        queue = self.queue(key)
        client = self._own_redis()
        await cluster_ready(queue, client)
        outcome = await cancel_waiting(
            client, self._remove_script, queue.keys[""], job_id, lambda: queue.getJobState(job_id)
        )
        return CancelResult(queue_name(key, self.settings), job_id, outcome)

    def _own_redis(self) -> Any:
        if self._redis is None:
            self._redis = redis_client(self.settings)
            bound_retries(self.settings, self._redis)
            self._remove_script = self._redis.register_script(script_source("removeJob"))
        return self._redis


OOM_MARKER = "command not allowed when used memory"


@asynccontextmanager
async def redis_errors(settings: Settings, consequence: str) -> Any:
    """Turn redis-py errors into bullwait errors that say what happened and what to do.

    `consequence` says what the caller may rely on (e.g. "job not added"). Passwords
    never reach the message: Redis is described by its masked URL.
    """
    where = describe_redis(settings)
    try:
        yield
    except AuthenticationError:
        raise RedisUnavailable(credentials_refused(settings, consequence)) from None
    except NoPermissionError as exc:
        raise RedisUnavailable(
            f"Redis at {where} denied a command to this user ({consequence}): {first_line(exc)}; "
            "grant the ACL in docs/security.md"
        ) from None
    except ResponseError as exc:
        redirect = cluster_redirect(settings, exc)
        if redirect is not None:
            raise redirect from None
        if not isinstance(exc, OutOfMemoryError) and OOM_MARKER not in str(exc):
            raise
        raise RedisOutOfMemory(
            f"Redis at {where} is out of memory (maxmemory reached, policy noeviction): {consequence}; "
            "jobs already queued are kept. Free memory (clean finished jobs), raise maxmemory, then retry"
        ) from None
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {where} after retrying for {settings.bullwait_redis_retry_timeout:g}s "
            f"({first_line(exc)}): {consequence}; retry later (BULLWAIT_REDIS_RETRY_TIMEOUT sets the wait)"
        ) from None
