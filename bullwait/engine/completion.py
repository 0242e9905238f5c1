"""bullmq's `moveToFinished` call for a completed job, with what never changes packed once.

`Scripts.moveToCompletedArgs` looks up eleven queue keys by name, builds three more and
`autopipeline.pack` then encodes all fourteen keys and eight arguments, for every job:
after the socket write, the biggest cost in a worker's per-job CPU. Thirteen of the keys
and four of the arguments are the same for every job of a worker, so `CompletionCalls`
packs them once, and reads the worker's options the script needs (limiter, lock duration,
metrics size) once; per job it encodes the job's key, id, time, return value and the
msgpack options, in the order bullmq writes them. A test compares the keys, arguments
and bytes with bullmq's own `moveToCompletedArgs`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgpack

from bullwait.engine.autopipeline import pack_args
from bullwait.engine.internals import FINISHED_KEY_COUNT, FINISHED_KEYS, scripts_of

_ARG_COUNT = 8


def keep_jobs(should_remove: Any) -> dict[str, Any]:
    """bullmq's `getKeepJobs`: the job's `removeOnComplete` as the script reads it."""
    if type(should_remove) is int:
        return {"count": should_remove}
    if type(should_remove) is dict:
        return should_remove
    return {"count": 0} if should_remove else {"count": -1}


class CompletionCalls:
    """Packed `EVALSHA moveToFinished` calls for one worker's completed jobs."""

    def __init__(self, worker: Any) -> None:
        scripts = scripts_of(worker)
        self.scripts = scripts
        self.script = scripts.script("moveToFinished")
        self.keys_before = scripts.keys([*FINISHED_KEYS, "completed"])
        self.keys_after = [scripts.to_key("metrics:completed"), scripts.key("marker")]
        self._head = b"*%d\r\n" % (3 + FINISHED_KEY_COUNT + _ARG_COUNT) + pack_args(
            ("EVALSHA", self.script.sha, FINISHED_KEY_COUNT, *self.keys_before)
        )
        self._after = pack_args(self.keys_after)
        self._returnvalue = pack_args(("returnvalue",))
        prefix = scripts.prefix
        self._tail = {True: pack_args(("completed", "1", prefix)), False: pack_args(("completed", "", prefix))}
        self._tail_args = {True: ["completed", "1", prefix], False: ["completed", "", prefix]}
        # What bullmq reads from `job.queue.opts` for every job: the worker's options.
        opts = worker.opts
        metrics = opts.get("metrics")
        self._limiter = opts.get("limiter")
        self._lock_duration = opts.get("lockDuration")
        self._max_metrics = metrics.get("maxDataPoints", "") if metrics is not None else ""

    def build(
        self, job: Any, result: Any, token: str, fetch: bool, timestamp: int | None = None
    ) -> tuple[list[Any], list[Any], bytes]:
        """(keys, args, packed EVALSHA) of `moveToCompletedArgs(job, result, removeOnComplete, token, fetch)`."""
        # A processor that returns nothing (most do) skips the encoder.
        value = "null" if result is None else json.dumps(result, separators=(",", ":"), allow_nan=False) or ""
        if timestamp is None:
            timestamp = round(time.time() * 1000)
        job_opts = job.opts
        packed_opts = msgpack.packb(
            {
                "token": token,
                "keepJobs": keep_jobs(job_opts.get("removeOnComplete", False)),
                "limiter": self._limiter,
                "lockDuration": self._lock_duration,
                "attempts": job.attempts,
                "attemptsMade": job.attemptsMade,
                "maxMetricsSize": self._max_metrics,
                "fpof": job_opts.get("failParentOnFailure", False),
                "cpof": job_opts.get("continueParentOnFailure", False),
                "idof": job_opts.get("ignoreDependencyOnFailure", False),
                "rdof": job_opts.get("removeDependencyOnFailure", False),
            },
            use_bin_type=True,
        )
        fetch = bool(fetch)
        job_key = self.scripts.to_key(job.id)
        keys = [*self.keys_before, job_key, *self.keys_after]
        args = [job.id, timestamp, "returnvalue", value, *self._tail_args[fetch], packed_opts]
        packed = (
            self._head
            + pack_args((job_key,))
            + self._after
            + pack_args((job.id, timestamp))
            + self._returnvalue
            + pack_args((value,))
            + self._tail[fetch]
            + pack_args((packed_opts,))
        )
        return keys, args, packed
