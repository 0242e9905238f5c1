"""Processors: plain async functions registered per queue and job name with a payload model.

    registry = Registry()

    @registry.processor(QueueKey.WAITLIST_EXPIRY, "check-expiry", ExpiryJob)
    async def check_expiry(payload: ExpiryJob, ctx: Context) -> dict:
        ...

`QueueDispatch` validates the job's data with the model, runs the function, logs the NestJS module's
event shapes (`queue`, `job`, `jobId`, `duration`, `error`) and turns bad data into an
`UnrecoverableError` so it fails once, with its data kept, and is never retried.

A write the replicas did not confirm (`WriteNotDurable`, BULLWAIT_WAIT_REPLICAS) is not the
job's failure: the master has no replica to confirm with (after a failover, until the
demoted master rejoins as a replica), or they lag. The job goes back to delayed for
DURABLE_RETRY_MS without using an attempt, so an outage longer than its retries (3 attempts
are about 12 s of WAITs and back-off) pauses it instead of failing it for good; every write
it makes is safe to repeat (`bullwait.engine.durable`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bullmq import DelayedError, UnrecoverableError
from bullmq.job import Job

from bullwait.engine.jobcheck import BadOption, attempts_value
from bullwait.errors import InvalidJobData, WriteNotDurable
from bullwait.logs import clip, debug_enabled, log_job_completed
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import WireModel, parse_payload

Handler = Callable[[Any, "Context"], Awaitable[Any]]
# Longest error message kept as a job's failedReason and logged (the rest is cut).
FAILED_REASON_LIMIT = 2000
# How long a job whose write the replicas did not confirm sleeps before it runs again.
DURABLE_RETRY_MS = 1000


@dataclass
class Context:
    """What a processor gets besides its payload: the bullmq job and its lock token, the
    queue, settings, a logger bound to the job, and the process's `Services`."""

    job: Job
    token: str
    queue: QueueKey
    queue_name: str
    settings: Settings
    log: Any
    services: Any = None


@dataclass(frozen=True)
class Registration:
    queue: QueueKey
    job_name: str
    model: type[WireModel]
    handler: Handler


@dataclass
class Registry:
    """Which function handles which (queue, job name)."""

    _entries: dict[tuple[QueueKey, str], Registration] = field(default_factory=dict)

    def register(self, queue: QueueKey, job_name: str, model: type[WireModel], handler: Handler) -> None:
        self._entries[(queue, job_name)] = Registration(queue, job_name, model, handler)

    def processor(self, queue: QueueKey, job_name: str, model: type[WireModel]) -> Callable[[Handler], Handler]:
        def decorate(fn: Handler) -> Handler:
            self.register(queue, job_name, model, fn)
            return fn

        return decorate

    def lookup(self, queue: QueueKey, job_name: str) -> Registration | None:
        return self._entries.get((queue, job_name))

    def job_names(self, queue: QueueKey) -> list[str]:
        return [name for (q, name) in self._entries if q is queue]

    def merge(self, other: Registry) -> None:
        """Add `other`'s registrations; they replace ours for the same (queue, job name)."""
        self._entries.update(other._entries)


class JobObserver(Protocol):
    """Hooks for metrics; the default does nothing. `started` runs once the job's data is
    valid, with its payload, just before the processor; `finished` runs for every job."""

    def started(self, queue: str, job: Job, payload: Any) -> None: ...
    def finished(self, queue: str, job: Job, status: str, seconds: float) -> None: ...
    def stalled(self, queue: str, job_id: str) -> None: ...


class NullObserver:
    def started(self, queue: str, job: Job, payload: Any) -> None:
        return None

    def finished(self, queue: str, job: Job, status: str, seconds: float) -> None:
        return None

    def stalled(self, queue: str, job_id: str) -> None:
        return None


_NO_OBSERVER = NullObserver()


class JobLog:
    """`log.bind(queue=..., job=..., jobId=...)`, bound when first used: `Context.log` of a
    job whose processor never logs costs no bound logger (binding was most of the cost of
    a job's logging after the `job completed` line got its own path)."""

    __slots__ = ("_bound", "_job", "_job_id", "_log", "_queue")

    def __init__(self, log: Any, queue: str, job: str, job_id: Any) -> None:
        self._log = log
        self._queue = queue
        self._job = job
        self._job_id = job_id
        self._bound: Any = None

    @property
    def bound(self) -> Any:
        if self._bound is None:
            self._bound = self._log.bind(queue=self._queue, job=self._job, jobId=self._job_id)
        return self._bound

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bound, name)

    def __repr__(self) -> str:
        return repr(self.bound)


class QueueDispatch:
    """The processor a queue's worker runs: each job through the function registered for its
    name, with what stays the same from job to job looked up once."""

    def __init__(
        self,
        registry: Registry,
        queue: QueueKey,
        queue_name: str,
        settings: Settings,
        log: Any,
        services: Any = None,
        observer: JobObserver | None = None,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.queue_name = queue_name
        self.settings = settings
        self.log = log
        self.services = services
        self.observer = observer or _NO_OBSERVER
        self._registrations: dict[str, Registration] = {}

    def _registration(self, job_name: str) -> Registration:
        registration = self.registry.lookup(self.queue, job_name)
        if registration is None:
            known = ", ".join(self.registry.job_names(self.queue)) or "none"
            raise UnrecoverableError(
                f"No processor for job name {job_name!r} on queue {self.queue_name!r} (registered: {known})"
            )
        if isinstance(job_name, str):  # names with no processor are not kept: there may be any number
            self._registrations[job_name] = registration
        return registration

    async def run(self, job: Job, token: str) -> Any:
        """Run one job through its registered processor. Raises what bullmq must see."""
        log, queue_name, obs = self.log, self.queue_name, self.observer
        name, job_id = job.name, job.id
        jlog = JobLog(log, queue_name, name, job_id)
        started = time.perf_counter()
        if debug_enabled(log):  # `jlog.debug(...)`'s line, without binding a logger that may never be used
            log.debug("job started", queue=queue_name, job=name, jobId=job_id, attempt=job.attemptsMade + 1)
        status = "failed"
        try:
            registration = self._registrations.get(name) or self._registration(name)
            try:
                payload = parse_payload(registration.model, job.data, getattr(job, "raw_data_size", None))
            except InvalidJobData as exc:
                raise UnrecoverableError(str(exc)) from None
            obs.started(queue_name, job, payload)
            ctx = Context(job, token, self.queue, queue_name, self.settings, jlog, self.services)
            result = await registration.handler(payload, ctx)
            status = "completed"
            return result
        except DelayedError:
            status = "delayed"
            raise
        except WriteNotDurable as exc:
            await _wait_for_replicas(job, token, exc, jlog, started)
            status = "delayed"
            raise DelayedError(str(exc)) from None
        except Exception as exc:
            _clip_message(exc)
            status = "failed" if _final(job, exc) else "retried"
            level = "error" if status == "failed" else "warning"
            getattr(jlog, level)(
                "job failed" if status == "failed" else "job will retry",
                duration=_ms(started),
                error=str(exc) or type(exc).__name__,
                attemptsMade=job.attemptsMade + 1,
            )
            raise
        finally:
            seconds = time.perf_counter() - started
            obs.finished(queue_name, job, status, seconds)
            if status == "completed":
                log_job_completed(log, queue_name, name, job_id, seconds)


async def _wait_for_replicas(job: Job, token: str, exc: WriteNotDurable, log: Any, started: float) -> None:
    """Back to delayed, no attempt used (see the module docstring). If even that fails (the
    lock lost in the failover), `exc` is raised as a failure: stalled-job recovery, or a
    retry, takes the job from there."""
    log.warning(
        "job waits for replicas to confirm its writes",
        duration=_ms(started),
        retry_in=f"{DURABLE_RETRY_MS} ms",
        error=clip(str(exc), 300),
    )
    try:
        await job.moveToDelayed(int(time.time() * 1000) + DURABLE_RETRY_MS, token)
    except Exception:
        raise exc from None


def _final(job: Job, exc: Exception) -> bool:
    """Whether the worker will fail `job` for good (an option it cannot use counts: see `jobcheck`)."""
    if isinstance(exc, UnrecoverableError):
        return True
    try:
        attempts = attempts_value(job.opts.get("attempts", 0))
    except BadOption:
        return True
    return bool(job.attemptsMade + 1 >= max(attempts, 1))


def _clip_message(exc: Exception) -> None:
    """Cap the message bullmq stores as failedReason (and in the stacktrace) and we log."""
    text = str(exc)
    if len(text) > FAILED_REASON_LIMIT and len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (clip(text, FAILED_REASON_LIMIT),)


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.1f}ms"
