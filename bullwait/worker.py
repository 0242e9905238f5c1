"""`BullwaitWorker`: the official bullmq-py Worker with three fixes bullwait needs.

1. Timer precision. A stock Worker blocks on the marker with `BZPOPMIN` for a timeout
   rounded *up* to whole seconds until something asks the server's version (which sets
   `canDoubleTimeout`); nothing in the worker does, so delayed jobs run ~0.5 s late on
   average and ~1 s at p99. We read the server version before the first wait, so the
   wait ends at the next due time, as in Node.
2. Visibility. bullmq-py names its connections `bull:<queue>:w:<name>`; Node's
   `getWorkers()` and Bull Board look for `bull:<base64(queue)>:w:<name>`. The main
   connection keeps the Python name (bullmq-py's `get_workers()` still sees us) and the
   blocking connection takes the Node name (Node and Bull Board see us).
3. Undecodable job data. A job whose `data` is not JSON makes bullmq-py raise while
   fetching it, leaving it active until it stalls. We fail it at once, unrecoverably,
   with a reason that says so; its raw data stays in Redis.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from bullmq import Worker
from bullmq.job import Job


def default_worker_name() -> str:
    """`bullwait-<host>-<pid>`: unique per process, readable in CLIENT LIST and Bull Board."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"bullwait-{host}-{os.getpid()}"


def node_client_name(prefix: str, queue: str, worker_name: str | None) -> str:
    """The connection name Node bullmq gives a worker, which `Queue.getWorkers()` matches."""
    encoded = base64.b64encode(queue.encode()).decode()
    return f"{prefix}:{encoded}" + (f":w:{worker_name}" if worker_name else "")


class BullwaitWorker(Worker):
    """A bullmq Worker that is on time, visible to Node, and robust to undecodable data."""

    async def run(self) -> None:  # type: ignore[override]
        await self.prime()
        await super().run()

    async def prime(self) -> None:
        """Learn the server's capabilities (1 ms and fractional blocking timeouts)."""
        for conn in (self.backend.connection, self.backend.blocking_connection):
            if conn is not None:
                await conn.getRedisVersion()

    async def _ensure_client_names(self) -> None:
        if self._client_name_set:
            return
        python_name = self.clientName
        node_name = node_client_name(self.prefix, self.name, self.workerName)
        await self.backend.connection.set_client_name(python_name)
        if self.backend.blocking_connection is not None:
            await self.backend.blocking_connection.set_client_name(node_name)
        self._client_name_set = True

    async def nextJobFromJobData(  # type: ignore[override]
        self,
        job_data: Any = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Job | None:
        if job_data and not _decodes(job_data):
            job_data = _with_deferred_failure(job_data)
        return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)


def _decodes(job_data: Any) -> bool:
    try:
        raw = job_data.get("data", "{}") if isinstance(job_data, dict) else "{}"
        json.loads(raw)
        json.loads(job_data.get("opts", "{}"))
        return True
    except (ValueError, TypeError, RecursionError):
        return False


def _with_deferred_failure(job_data: dict[str, Any]) -> dict[str, Any]:
    """Replace undecodable fields so the Job can be built, and mark it to fail unrecoverably."""
    fixed = dict(job_data)
    reasons = []
    for field in ("data", "opts"):
        try:
            json.loads(fixed.get(field, "{}"))
        except RecursionError:
            reasons.append(f"{field} is nested too deeply")
            fixed[field] = "{}"
        except (ValueError, TypeError):
            reasons.append(f"{field} is not valid JSON")
            fixed[field] = "{}"
    fixed["defa"] = "Invalid job data: " + ", ".join(reasons) + " (left unchanged in Redis)"
    return fixed
