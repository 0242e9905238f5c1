"""`BullwaitWorker`: the official bullmq-py Worker with three fixes bullwait needs.

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
4. Rate limits. When the worker `limiter` is hit, a stock Worker goes back to blocking on
   the marker and can stay there: under `limiter: {max: 80, duration: 1000}` it stopped
   for good after the first 80 jobs here. Like Node, we wait out the limit ourselves
   (`limitUntil` ms) and then ask for the next job.
5. Socket timeout. redis-py (8.x) gives every connection a 5 s `socket_timeout`, while
   the worker blocks for up to 10 s (5 s `drainDelay` when idle). A wait longer than
   5 s raised TimeoutError, which bullmq-py treats as a lost connection and retries
   after `runRetryDelay` (15 s): here a worker started before its timers were added
   ran none of them for 20+ s. We raise the timeout above the longest block.
6. Undecodable job data. A job whose `data` is not JSON makes bullmq-py raise while
   fetching it, leaving it active until it stalls. We fail it at once, unrecoverably,
   with a reason that says so; its raw data stays in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
from typing import Any

import time

from bullmq import Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError, WaitingChildrenError
from bullmq.job import Job


def default_worker_name() -> str:
    """`bullwait-<host>-<pid>`: unique per process, readable in CLIENT LIST and Bull Board."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"bullwait-{host}-{os.getpid()}"


def node_client_name(prefix: str, queue: str, worker_name: str | None) -> str:
    """The connection name Node bullmq gives a worker, which `Queue.getWorkers()` matches."""
    encoded = base64.b64encode(queue.encode()).decode()
    return f"{prefix}:{encoded}" + (f":w:{worker_name}" if worker_name else "")


# Above bullmq-py's longest blocking wait (10 s) plus slack; redis-py's default is 5 s.
SOCKET_TIMEOUT_S = 20.0
# Longer than Redis's blocked-client timeout granularity at the default hz 10 (100 ms).
PRECISE_WAIT_MS = 110


class BullwaitWorker(Worker):
    """A bullmq Worker that is on time, visible to Node, and robust to undecodable data."""

    # Fetch the next job with moveToFinished (one Lua call per job instead of two).
    fetch_next: bool = True

    def __init__(self, name: str, processor: Any, opts: dict[str, Any] | None = None) -> None:
        opts = dict(opts or {})
        conn = opts.get("connection")
        if isinstance(conn, dict) and (conn.get("socket_timeout") or 0) < SOCKET_TIMEOUT_S:
            opts["connection"] = {**conn, "socket_timeout": SOCKET_TIMEOUT_S}
        super().__init__(name, processor, opts)

    async def run(self) -> None:  # type: ignore[override]
        await self.prime()
        await super().run()

    async def prime(self) -> None:
        """Learn the server's capabilities (1 ms and fractional blocking timeouts)."""
        for conn in (self.backend.connection, self.backend.blocking_connection):
            if conn is not None:
                await conn.getRedisVersion()

    async def waitForJob(self) -> int:  # type: ignore[override]
        """Wait for the marker; the last `PRECISE_WAIT_MS` before a due time in the event loop."""
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
        await self.backend.connection.set_client_name(python_name)
        if self.backend.blocking_connection is not None:
            await self.backend.blocking_connection.set_client_name(node_name)
        self._client_name_set = True

    async def processJob(self, job: Job, token: str) -> None:  # type: ignore[override]
        """Process `job`, then each job that completing it fetched, in this slot."""
        current: Job | None = job
        while current is not None:
            current = await self._process_one(current, token)

    async def getNextJob(self, token: str) -> Job | None:  # type: ignore[override]
        if not self.limitUntil:
            return await super().getNextJob(token)
        await asyncio.sleep(self.limitUntil / 1000)
        if self.closing or self.paused:
            return None
        job = await self.moveToActive(token)
        if job is not None:
            self.emit("active", job, "waiting")
        return job

    def _may_fetch_next(self) -> bool:
        return self.fetch_next and not (self.closing or self.paused or self.forceClosing or self.closed)

    async def _process_one(self, job: Job, token: str) -> Job | None:
        """bullmq-py's `processJob` for one job; returns the next job if completing fetched one."""
        fetched: Any = None
        try:
            if "removeOnComplete" not in job.opts and "removeOnComplete" in self.opts:
                job.opts["removeOnComplete"] = self.opts["removeOnComplete"]
            if "removeOnFail" not in job.opts and "removeOnFail" in self.opts:
                job.opts["removeOnFail"] = self.opts["removeOnFail"]
            self.jobs.add((job, token))
            controller = self.lockManager.track_job(
                job.id, token, int(time.time() * 1000), should_create_controller=self._processor_wants_signal
            )
            if job.deferredFailure:
                await job.moveToFailed(UnrecoverableError(job.deferredFailure), token)
                self.emit("failed", job, UnrecoverableError(job.deferredFailure))
                return None
            if controller is not None:
                result = await self.processor(job, token, controller.signal)
            else:
                result = await self.processor(job, token)
            if not self.forceClosing:
                fetch = self._may_fetch_next()
                moved = await self.backend.moveToCompleted(
                    job, result, job.opts.get("removeOnComplete", False), token, fetch_next=fetch
                )
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
                if fetch:
                    fetched = moved["result"]
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return None
        except Exception as err:
            try:
                if not self.forceClosing:
                    await job.moveToFailed(err, token)
                self.emit("failed", job, err)
            except Exception as err2:
                self.emit("error", err2, job)
            return None
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
        if not fetched:
            return None
        job_data, job_id, limit_until, delay_until = fetched
        try:
            following = await self.nextJobFromJobData(job_data, job_id, limit_until or 0, delay_until or 0, token)
        except Exception as err:  # the fetched job stays active; stalled recovery returns it
            self.emit("error", err)
            return None
        if following is not None:
            self.emit("active", following, "waiting")
        return following

    async def nextJobFromJobData(  # type: ignore[override]
        self,
        job_data: Any = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Job | None:
        try:
            return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        except (ValueError, TypeError):
            # Decoding only fails for bad data: check then, not for every job (hot path).
            if not job_data or _decodes(job_data):
                raise
            fixed = _with_deferred_failure(job_data)
            return await super().nextJobFromJobData(fixed, job_id, limit_until, delay_until, token)


def _decodes(job_data: Any) -> bool:
    try:
        raw = job_data.get("data", "{}") if isinstance(job_data, dict) else "{}"
        json.loads(raw)
        json.loads(job_data.get("opts", "{}"))
        return True
    except (ValueError, TypeError):
        return False


def _with_deferred_failure(job_data: dict[str, Any]) -> dict[str, Any]:
    """Replace undecodable fields so the Job can be built, and mark it to fail unrecoverably."""
    fixed = dict(job_data)
    reasons = []
    for field in ("data", "opts"):
        try:
            json.loads(fixed.get(field, "{}"))
        except (ValueError, TypeError):
            reasons.append(f"{field} is not valid JSON")
            fixed[field] = "{}"
    fixed["defa"] = "Invalid job data: " + ", ".join(reasons) + " (left unchanged in Redis)"
    return fixed
