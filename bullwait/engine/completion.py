"""bullmq's `moveToFinished` call for a completed job, with what never changes packed once.

`Scripts.moveToCompletedArgs` looks up eleven queue keys by name, builds three more and
`autopipeline.pack` then encodes all fourteen keys and eight arguments, for every job:
after the socket write, the biggest cost in a worker's per-job CPU. Thirteen of the keys
and four of the arguments are the same for every job of a worker, so `CompletionCalls`
packs them once, and reads the worker's options the script needs (limiter, lock duration,
metrics size) once; per job it fills in the job's key, id, time, return value and the
msgpack options, in the order bullmq writes them, and of the options only the token and
`attemptsMade` are packed for each job. Tests compare the keys, arguments and bytes with
bullmq's own `moveToCompletedArgs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import msgpack

from bullwait.engine.autopipeline import pack_args
from bullwait.engine.internals import FINISHED_KEY_COUNT, FINISHED_KEYS, scripts_of

_ARG_COUNT = 8
_HOLE = b"$%d\r\n%s\r\n"
_OPTS_KEPT = 256  # distinct job options whose packed parts are kept (a queue has a handful)


def _escaped(packed: bytes) -> bytes:
    """`packed`, to be written as it is by `%` formatting."""
    return packed.replace(b"%", b"%%")


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
        self._job_key_prefix = scripts.to_key("")
        prefix = scripts.prefix
        self._tail_args = {True: ["completed", "1", prefix], False: ["completed", "", prefix]}
        # The whole call with a `$<length>\r\n<bytes>\r\n` hole (`_HOLE`) for each argument that
        # changes per job: job key, id, timestamp, return value, packed options. Filled with one
        # `%`, where encoding them one by one cost more than the rest of the call.
        head = b"*%d\r\n" % (3 + FINISHED_KEY_COUNT + _ARG_COUNT) + pack_args(
            ("EVALSHA", self.script.sha, FINISHED_KEY_COUNT, *self.keys_before)
        )
        self._calls = {
            fetch: _escaped(head) + _HOLE + _escaped(pack_args(self.keys_after)) + _HOLE + _HOLE
            + _escaped(pack_args(("returnvalue",))) + _HOLE + _escaped(pack_args(tail)) + _HOLE
            for fetch, tail in self._tail_args.items()
        }  # fmt: skip
        # What bullmq reads from `job.queue.opts` for every job: the worker's options.
        opts = worker.opts
        metrics = opts.get("metrics")
        self._limiter = opts.get("limiter")
        self._lock_duration = opts.get("lockDuration")
        self._max_metrics = metrics.get("maxDataPoints", "") if metrics is not None else ""
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pack = self._packer.pack
        # Per distinct job options: the packed options around the token and `attemptsMade`.
        self._opts_parts: dict[bytes, tuple[bytes, bytes, bytes]] = {}

    def build(
        self, job: Any, result: Any, token: str, fetch: bool, timestamp: int | None = None
    ) -> tuple[list[Any], list[Any], bytes]:
        """(keys, args, packed EVALSHA) of `moveToCompletedArgs(job, result, removeOnComplete, token, fetch)`."""
        # A processor that returns nothing (most do) skips the encoder.
        value = "null" if result is None else json.dumps(result, separators=(",", ":"), allow_nan=False) or ""
        if timestamp is None:
            timestamp = round(time.time() * 1000)
        packed_opts = self._packed_opts(job, token)
        fetch = bool(fetch)
        job_id = job.id
        id_text = str(job_id)  # bullmq writes what it is given as text
        job_key = self._job_key_prefix + id_text
        keys = [*self.keys_before, job_key, *self.keys_after]
        args = [job_id, timestamp, "returnvalue", value, *self._tail_args[fetch], packed_opts]
        key_bytes, id_bytes, value_bytes = job_key.encode(), id_text.encode(), value.encode()
        stamp = b"%d" % timestamp
        packed = self._calls[fetch] % (
            len(key_bytes), key_bytes, len(id_bytes), id_bytes, len(stamp), stamp,
            len(value_bytes), value_bytes, len(packed_opts), packed_opts,
        )  # fmt: skip
        return keys, args, packed

    def _packed_opts(self, job: Any, token: str) -> bytes:
        """`msgpack.packb(self._opts(job, token))`. A msgpack map is its header, then each key
        and value packed in turn: only the token and `attemptsMade` change from job to job, so
        the bytes around them are packed once per distinct job options. Those options, packed,
        are the key: unlike the values, their bytes tell apart 1, 1.0 and True, as the script's
        options do."""
        job_opts = job.opts
        pack: Callable[[Any], bytes] = self._pack
        key = pack(
            (
                job_opts.get("removeOnComplete", False),
                job.attempts,
                job_opts.get("failParentOnFailure", False),
                job_opts.get("continueParentOnFailure", False),
                job_opts.get("ignoreDependencyOnFailure", False),
                job_opts.get("removeDependencyOnFailure", False),
            )
        )
        parts = self._opts_parts.get(key)
        if parts is None:
            parts = self._split_opts(job)
            if len(self._opts_parts) >= _OPTS_KEPT:
                self._opts_parts.clear()
            self._opts_parts[key] = parts
        return parts[0] + pack(token) + parts[1] + pack(job.attemptsMade) + parts[2]

    def _split_opts(self, job: Any) -> tuple[bytes, bytes, bytes]:
        """The packed options of `job` before its token, between token and `attemptsMade`, after it."""
        opts = self._opts(job, "")
        pieces = [self._packer.pack_map_header(len(opts)), b"", b""]
        part = 0
        for name, value in opts.items():
            pieces[part] += self._pack(name)
            if name in ("token", "attemptsMade"):
                part += 1  # its value is packed per job
            else:
                pieces[part] += self._pack(value)
        return pieces[0], pieces[1], pieces[2]

    def _opts(self, job: Any, token: str) -> dict[str, Any]:
        """The options `moveToCompletedArgs` packs, in its order."""
        job_opts = job.opts
        return {
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
        }
