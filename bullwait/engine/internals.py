"""Every use of bullmq-py's and redis-py's internals, in one module.

bullwait needs a few things neither client offers as API: bullmq's Lua scripts and the
order of their keys, its `Scripts` helper, the connections a `Worker` makes, redis-py's
pool lists and stream writer, and a `RedisCluster`'s nodes and slot map. Each function here
says what the public API lacks. The rest of bullwait calls these functions and uses only public names of the two clients
(`bullmq.Worker`, `Queue`, `Job` and the error classes, with the attributes and methods
they have without a leading underscore; `redis.asyncio.Redis`, its pools and
`Connection.send_packed_command` / `read_response`). The Sentinel classes in
`bullwait.engine.connection` subclass redis-py's; the behaviour of redis-py they rely on
is listed there ("Reliance on redis-py internals").

Everything here was checked against the versions in `SUPPORTED_BULLMQ` and
`SUPPORTED_REDIS` only; `check_compatibility()` refuses others at import of
`bullwait.engine`. docs/upgrading-bullmq.md lists what to re-check before widening them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bullmq import DelayedError, Job, UnrecoverableError, WaitingChildrenError, Worker

from bullwait.engine import jsontext
from bullwait.errors import UnsupportedClientVersion

# --- Versions ---------------------------------------------------------------------------------
# (lowest tested, first version not supported). Keep in step with pyproject.toml.
SUPPORTED_BULLMQ = ((3, 4, 4), (3, 5))
SUPPORTED_REDIS = ((8, 1, 0), (8, 2))
# Set to 1 to run on versions outside those ranges (only to test an upgrade; see the docs).
ALLOW_UNTESTED_ENV = "BULLWAIT_ALLOW_UNTESTED_CLIENTS"

# bullmq `Worker` methods `BullwaitWorker` wraps, with the parameters it relies on.
WORKER_METHODS: dict[str, tuple[str, ...]] = {
    "run": ("self",),
    "close": ("self", "force"),
    "getNextJob": ("self", "token"),
    "moveToActive": ("self", "token"),
    "waitForJob": ("self",),
    "processJob": ("self", "job", "token"),
    "nextJobFromJobData": ("self", "job_data", "job_id", "limit_until", "delay_until", "token"),
}

# --- Key orders of the scripts bullwait calls itself ------------------------------------------
# bullmq-py builds these lists inside `Scripts` methods that also send the call; bullwait packs
# the calls itself (completion.py, bulk.py, orphans.py), so it needs them by name. A script's
# file name carries its key count (`moveToFinished-14.lua`): `check_compatibility` compares it.

# moveToFinished: these, then the target set (`completed`), the job's key, its metrics key, the marker.
FINISHED_KEYS = ("wait", "active", "prioritized", "events", "stalled", "limiter", "delayed", "paused", "meta", "pc")
FINISHED_KEY_COUNT = len(FINISHED_KEYS) + 4
ADD_JOB_KEYS: dict[str, tuple[str, ...]] = {
    "addDelayedJob": ("marker", "meta", "id", "delayed", "completed", "events"),
    "addPrioritizedJob": ("marker", "meta", "id", "prioritized", "delayed", "completed", "active", "events", "pc"),
    "addStandardJob": ("wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker"),
}
# moveJobFromActiveToWait (the job's key is one of its arguments).
FROM_ACTIVE_TO_WAIT_KEYS = ("active", "wait", "stalled", "paused", "meta", "limiter", "prioritized", "marker", "events")
# getStateV2: the sets and lists a job can be in, in the order the script looks.
GET_STATE_KEYS = ("completed", "failed", "delayed", "active", "wait", "paused", "waiting-children", "prioritized")


def move_jobs_to_wait_keys(source: str) -> tuple[str, ...]:
    """moveJobsToWait (retryJobs / promoteJobs): "" is the queue's own prefix key."""
    return ("", "events", source, "wait", "paused", "meta", "active", "marker")


def pause_keys(paused: bool) -> tuple[str, ...]:
    """pause: the list jobs leave, the one they join, then the rest."""
    src, dst = ("wait", "paused") if paused else ("paused", "wait")
    return (src, dst, "meta", "prioritized", "events", "delayed", "marker")


def remove_job_keys(job_id: str) -> tuple[str, ...]:
    """removeJob: the job's hash and the queue's repeat key."""
    return (job_id, "repeat")


# What `reset_cluster_connections` calls on each node of a cluster client.
CLUSTER_NODE_METHODS = ("update_active_connections_for_reconnect", "disconnect_free_connections")

# Every bullmq script bullwait runs, with the key count its callers build from the orders above.
KEY_COUNTS: dict[str, int] = {
    "moveToFinished": FINISHED_KEY_COUNT,
    **{name: len(keys) for name, keys in ADD_JOB_KEYS.items()},
    "moveJobFromActiveToWait": len(FROM_ACTIVE_TO_WAIT_KEYS),
    "moveJobsToWait": len(move_jobs_to_wait_keys("failed")),
    "pause": len(pause_keys(True)),
    "getStateV2": len(GET_STATE_KEYS),
    "removeJob": len(remove_job_keys("")),
    "cleanJobsInSet": 3,
}


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numbers of a version ("7.2.4-rc1" -> (7, 2, 4)); (0,) when there are none."""
    parts = []
    for part in text.split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts) or (0,)


def _range_text(supported: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    low, high = supported
    return f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"


def _installed(module: str) -> str:
    if module == "bullmq":
        import bullmq

        return str(getattr(bullmq, "__version__", "unknown"))
    import redis

    return str(getattr(redis, "__version__", "unknown"))


def version_problems(bullmq_version: str | None = None, redis_version: str | None = None) -> list[str]:
    """What is outside the tested ranges: one sentence per client (empty when all is well)."""
    problems = []
    for name, pip_name, version, supported in (
        ("bullmq-py", "bullmq", bullmq_version or _installed("bullmq"), SUPPORTED_BULLMQ),
        ("redis-py", "redis", redis_version or _installed("redis"), SUPPORTED_REDIS),
    ):
        low, high = supported
        if not low <= version_tuple(version) < high:
            problems.append(f"{name} {version} is installed; bullwait supports {pip_name}{_range_text(supported)}")
    return problems


def script_file(name: str) -> str:
    """The file name of bullmq's Lua script `name` (`moveToFinished` -> `moveToFinished-14.lua`).

    bullmq-py has no API for a script's source; `SCRIPT_DEFINITIONS` lists most of them, the
    others (`moveJobFromActiveToWait`) are found in its `commands` directory."""
    from bullmq.redis_connection import SCRIPT_DEFINITIONS, basePath

    if name in SCRIPT_DEFINITIONS:
        return str(SCRIPT_DEFINITIONS[name])
    for file in sorted(os.listdir(os.path.join(basePath, "commands"))):
        if re.fullmatch(re.escape(name) + r"-\d+\.lua", file):
            return file
    raise UnsupportedClientVersion(
        f"bullmq-py {_installed('bullmq')} has no Lua script {name!r}: bullwait supports "
        f"bullmq{_range_text(SUPPORTED_BULLMQ)}; install that range"
    )


def script_source(name: str) -> str:
    """The Lua source of bullmq's script `name`, to register on a client of bullwait's own."""
    from bullmq.redis_connection import loadScript

    return str(loadScript(script_file(name)))


def script_key_count(name: str) -> int:
    """The key count bullmq writes in the script's file name."""
    match = re.search(r"-(\d+)\.lua$", script_file(name))
    return int(match.group(1)) if match else -1


def compatibility_problems(bullmq_version: str | None = None, redis_version: str | None = None) -> list[str]:
    """Versions out of range, Worker methods renamed, scripts whose key count changed."""
    problems = version_problems(bullmq_version, redis_version)
    for method, params in WORKER_METHODS.items():
        found = getattr(Worker, method, None)
        if found is None:
            problems.append(f"bullmq.Worker has no method {method}()")
            continue
        names = tuple(inspect.signature(found).parameters)
        if names[: len(params)] != params:
            problems.append(f"bullmq.Worker.{method} takes {names}, bullwait expects {params}")
    from redis.asyncio.cluster import ClusterNode

    for method in CLUSTER_NODE_METHODS:
        if not callable(getattr(ClusterNode, method, None)):
            problems.append(f"redis.asyncio.cluster.ClusterNode has no method {method}()")
    for name, count in KEY_COUNTS.items():
        try:
            found_count = script_key_count(name)
        except UnsupportedClientVersion as exc:
            problems.append(str(exc))
            continue
        if found_count != count:
            problems.append(f"bullmq's {name} script takes {found_count} keys, bullwait passes {count}")
    return problems


def check_compatibility(bullmq_version: str | None = None, redis_version: str | None = None) -> None:
    """Raise `UnsupportedClientVersion` unless the installed bullmq-py and redis-py are the
    tested ones (or `BULLWAIT_ALLOW_UNTESTED_CLIENTS=1` says to try anyway)."""
    problems = compatibility_problems(bullmq_version, redis_version)
    if not problems or os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        return
    fix = (
        f"Install the supported versions (pip install 'bullmq{_range_text(SUPPORTED_BULLMQ)}' "
        f"'redis{_range_text(SUPPORTED_REDIS)}'), or to test an upgrade set {ALLOW_UNTESTED_ENV}=1 "
        "and follow docs/upgrading-bullmq.md"
    )
    raise UnsupportedClientVersion("; ".join(problems) + ". " + fix)


# --- bullmq's Scripts helper --------------------------------------------------------------------


@dataclass(frozen=True)
class QueueScripts:
    """What bullwait needs of bullmq's `Scripts` for one queue.

    bullmq-py builds each script call and sends it in one method, with no hook to send it
    another way (through the auto-pipeline, in one MULTI with WAIT behind it); `Scripts` is
    reached through the private-by-convention `backend` of a Queue or Worker."""

    scripts: Any

    def script(self, name: str) -> Any:
        """The registered `redis.commands.core.AsyncScript` (its `sha`, its `script`)."""
        return self.scripts.commands[name]

    def keys(self, names: Sequence[str]) -> list[str]:
        return list(self.scripts.getKeys(list(names)))

    def key(self, name: str) -> str:
        return str(self.scripts.keys[name])

    def to_key(self, suffix: str) -> str:
        """`<prefix>:<queue>:<suffix>`: a job's key (suffix its id), `metrics:completed`, ..."""
        return str(self.scripts.toKey(suffix))

    @property
    def prefix(self) -> str:
        """`<prefix>:<queue>:`, the first argument of several scripts."""
        return str(self.scripts.keys[""])

    def error(
        self,
        code: int,
        command: str,
        job_id: str | None = None,
        parent_key: str | None = None,
        state: str | None = None,
    ) -> Exception:
        """bullmq's exception for a script's negative reply code."""
        error: Exception = self.scripts.finishedErrors(
            {"code": code, "jobId": job_id, "parentKey": parent_key, "command": command, "state": state}
        )
        return error

    async def add_job_command(self, job: Job) -> tuple[tuple[Any, ...], str]:
        """bullmq's own `addJob` EVALSHA for `job` (every option it supports), not sent; and
        the Lua source of the script it chose. `Scripts.addJob` hands its `pipe` argument on
        as the client the script is called with, so `_CAPTURE` receives the call."""
        command = await self.scripts.addJob(job, pipe=_CAPTURE)
        source = next(str(s.script) for s in self.scripts.commands.values() if s.sha == command[1])
        return command, source


class _Capture:
    """Stands in for a redis client: `evalsha` returns the command instead of sending it.

    redis-py's `AsyncScript.__call__(keys, args, client)` ends in `client.evalsha(sha,
    numkeys, *keys_and_args)`; redis-py has no API that builds a script call without sending it."""

    async def evalsha(self, *args: Any) -> tuple[Any, ...]:
        return ("EVALSHA", *args)


_CAPTURE: Any = _Capture()


async def script_command(script: Any, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    """The EVALSHA a redis-py `AsyncScript` would send for `keys` and `args`, not sent."""
    command: tuple[Any, ...] = await script(keys=keys, args=args, client=_CAPTURE)
    return command


def scripts_of(queue_or_worker: Any) -> QueueScripts:
    return QueueScripts(queue_or_worker.backend.scripts)


def main_client(queue_or_worker: Any) -> Any:
    """The redis client bullmq sends a Queue's or Worker's commands on (bullmq keeps it in `backend`)."""
    return queue_or_worker.backend.connection.conn


def bullmq_connections(queue_or_worker: Any) -> list[Any]:
    """bullmq's `RedisConnection`s of a Queue or Worker (main, then blocking when there is one)."""
    backend = queue_or_worker.backend
    found = [backend.connection, getattr(backend, "blocking_connection", None)]
    return [conn for conn in found if conn is not None]


async def add_job(job: Job) -> str:
    """Add a bullmq `Job` built by hand. `Queue.add` builds its own Job from name, data and
    options and cannot take one; `Backend.addJob` does what it does after that."""
    return str(await job.queue.backend.addJob(job))


def next_job_data(raw: Any) -> list[Any]:
    """`moveToFinished`'s reply as `[job hash, id, limitUntil, delayUntil]`, as bullmq's
    `raw2NextJobData` decodes it (inlined: it runs for every job)."""
    if not raw:
        return [None, None, None, None]
    fields = raw[0]
    job_hash = dict(zip(fields[::2], fields[1::2])) if fields else None
    return [job_hash, raw[1], None, None] if len(raw) == 2 else [job_hash, raw[1], raw[2], raw[3]]


# --- Building a fetched job ---------------------------------------------------------------------
# `Job.fromJSON` (bullmq/job.py, as of 3.4.4) was a seventh of a bare worker's CPU per job:
# four `json.loads` (data, opts, and the "0" and "[]" of a job never run) and `Job.__init__`,
# which normalises the same options again for every job. `JobBuilder` builds the same `Job`
# for the hashes a worker fetches most, from a template per options text; any other hash
# goes to `Job.fromJSON` itself. A test compares the two, attribute by attribute.

# Hash fields `Job.fromJSON` reads as they are or with `int`. A hash with any other field it
# reads (`rjk`, `parent`, `returnvalue`, `stacktrace`, `progress`, ...) is built by `Job.fromJSON`.
_SLOW_HASH_FIELDS = frozenset(
    (
        "id",
        "progress",
        "rjk",
        "failedReason",
        "attemptsMade",
        "defa",
        "returnvalue",
        "stacktrace",
        "parentKey",
        "parent",
    )
)
_TEMPLATES_KEPT = 256


class JobBuilder:
    """`Job.fromJSON(queue, hash, job_id)`, faster for the common hash (see above)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        # Per options text: the attributes `Job.__init__` derives from it, or None for options
        # the fast path does not take (nested containers, values it would have to copy deeply).
        self._templates: dict[str, dict[str, Any] | None] = {}

    def build(self, raw: dict[str, Any], job_id: str | None) -> Job:
        if not job_id or not _SLOW_HASH_FIELDS.isdisjoint(raw):
            return Job.fromJSON(self.queue, raw, job_id)
        opts_text = raw.get("opts", "{}")
        template = self._templates.get(opts_text, _MISSING)
        if template is _MISSING:
            template = self._template(opts_text)
        if template is None:
            return Job.fromJSON(self.queue, raw, job_id)
        data = jsontext.loads(raw.get("data", "{}"))  # raises for data that is not JSON, as `fromJSON` does
        job = Job.__new__(Job)
        attrs = job.__dict__
        attrs.update(template)
        # Each job its own options (one level deep: `_flat`), as `Job.__init__` would make them.
        opts = attrs["opts"] = {k: v.copy() if type(v) is dict else v for k, v in template["opts"].items()}
        attrs["removeOnComplete"] = opts.get("removeOnComplete", True)
        attrs["removeOnFail"] = opts.get("removeOnFail", False)
        attrs["stacktrace"] = []
        attrs["name"] = raw.get("name")
        attrs["data"] = data
        attrs["id"] = job_id
        attrs["delay"] = int(raw.get("delay", "0"))
        attrs["priority"] = int(raw.get("priority", "0"))
        attrs["timestamp"] = int(raw.get("timestamp", "0"))
        if raw.get("finishedOn"):
            attrs["finishedOn"] = int(raw["finishedOn"])
        if raw.get("processedOn"):
            attrs["processedOn"] = int(raw["processedOn"])
        if raw.get("ats"):
            attrs["attemptsStarted"] = int(raw["ats"])
        attrs["attemptsMade"] = int(raw.get("atm") or "0")
        attrs["stalledCounter"] = int(raw.get("stc") or "0")
        return job

    def _template(self, opts_text: str) -> dict[str, Any] | None:
        from bullmq.job import optsFromJSON

        template: dict[str, Any] | None = None
        try:
            opts = optsFromJSON(json.loads(opts_text))
            if _flat(opts) and not opts.get("parent"):
                template = dict(vars(Job(self.queue, None, None, opts)))
        except Exception:  # noqa: BLE001 - `Job.fromJSON` raises it again, where it is handled
            template = None
        if len(self._templates) >= _TEMPLATES_KEPT:
            self._templates.clear()
        self._templates[opts_text] = template
        return template


_MISSING: Any = object()


def fetched_job(
    worker: Any, builder: JobBuilder, job_data: Any, job_id: Any, limit_until: int, delay_until: int, token: Any
) -> Job | None:
    """bullmq-py's `Worker.nextJobFromJobData` (3.4.4) for a fetched job hash, with `JobBuilder`
    in place of `Job.fromJSON`; None where bullmq's own must run: no job (it marks the queue
    drained) or a job from a scheduler (it schedules the next iteration)."""
    if not job_data or "rjk" in job_data:
        return None
    worker.limitUntil = max(limit_until, 0) or 0
    if delay_until:
        worker.blockUntil = max(int(delay_until), 0) or 0
    worker.drained = False
    job = builder.build(job_data, job_id)
    job.token = token
    return job


def _flat(opts: Any) -> bool:
    """Options whose values are scalars or objects of scalars (copied per job one level deep)."""
    if type(opts) is not dict:
        return False
    for value in opts.values():
        if type(value) is dict:
            if any(type(v) in (dict, list) for v in value.values()):
                return False
        elif type(value) is list:
            return False
    return True


def encode_job_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Job options under the short names bullmq stores (`Scripts.encodeOpts`, without a Scripts)."""
    from bullmq.job import optsEncodeMap

    return {optsEncodeMap.get(key, key): value for key, value in opts.items()}


def normalize_backoff(backoff: Any) -> Any:
    """A job's `backoff` as bullmq's `Job` stores it (a number becomes `{"type": "fixed", ...}`)."""
    from bullmq.backoffs import Backoffs

    return Backoffs.normalize(backoff)


# --- The worker ----------------------------------------------------------------------------------


def use_blocking_client(worker: Any, client: Any) -> None:
    """Give a bullmq Worker built on a client instance its own blocking client.

    bullmq-py's `create_redis_backend` wraps the same `connection` in the main and the
    blocking `RedisConnection` and has no option for another: one client instance would
    carry the BZPOPMIN and every other command, under one name. The worker keeps snapshots
    of both (`blockingRedisConnection`, `bclient`), replaced here too."""
    from bullmq.redis_connection import RedisConnection

    blocking = RedisConnection(client, skipVersionCheck=worker.opts.get("skipVersionCheck", False))
    worker.backend.blocking_connection = blocking
    worker.blockingRedisConnection = blocking
    worker.bclient = blocking.conn


async def learn_server_version(worker: Any) -> None:
    """Ask Redis its version on both connections. bullmq-py sets `canDoubleTimeout` (fractional
    BZPOPMIN timeouts) only when something asks, and its Worker never does."""
    for conn in bullmq_connections(worker):
        await conn.getRedisVersion()


async def name_worker_connections(worker: Any, main_name: str, blocking_name: str) -> None:
    """Name the worker's connections, now and after every reconnect.

    bullmq-py's Worker gives both connections one name, once, from `_ensure_client_names`
    (which `run()` and `getNextJob()` call and which checks `_client_name_set`); it has no
    option for a second name. Setting the flag here makes its own naming a no-op."""
    main, blocking = worker.backend.connection, worker.backend.blocking_connection
    keep_client_name(main, main_name)
    await main.set_client_name(main_name)
    if blocking is not None:
        keep_client_name(blocking, blocking_name)
        await blocking.set_client_name(blocking_name)
    worker._client_name_set = True


async def fail_job(worker: Any, job: Job, reason: str, remove_on_fail: Any, token: str, fields: dict[str, Any]) -> None:
    """bullmq's `moveToFinished` to `failed` with no retry decision and `fields` written to the
    job hash. `Job.moveToFailed` always decides on retries from the job's options, which is
    what fails for a poison job; the backend call takes the fields as they are."""
    await worker.backend.moveToFailed(job, reason, remove_on_fail, token, False, fields)


async def process_job(
    worker: Any,
    job: Job,
    token: str,
    complete: Callable[[Job, Any, str], Awaitable[Job | None]],
    fail: Callable[[Job, Exception, str], Awaitable[None]],
) -> Job | None:
    """bullmq-py's `Worker.processJob` (bullmq/worker.py, as of 3.4.4) for one job, with two
    changes; returns the job `complete` fetched, if any.

    Kept as a copy because `processJob` has no hook for either change. It completes with
    `moveToCompleted(fetch_next=False)` and ignores the reply, so every job costs a second
    Lua call (`moveToActive`) where Node fetches it in the same one. It fails through
    `Job.moveToFailed`, which raises for options no retry decision can be made from (the
    job then stalls for ever). So `complete` completes and may fetch the next job, and
    `fail` checks the options first and emits `failed` itself. A job marked
    `deferredFailure` fails before its lock is tracked: an undecodable id cannot be sent in
    the lock-renewal batch. When bullmq's `processJob` changes, change this with it
    (docs/upgrading-bullmq.md)."""
    following: Job | None = None
    try:
        if "removeOnComplete" not in job.opts and "removeOnComplete" in worker.opts:
            job.opts["removeOnComplete"] = worker.opts["removeOnComplete"]
        if "removeOnFail" not in job.opts and "removeOnFail" in worker.opts:
            job.opts["removeOnFail"] = worker.opts["removeOnFail"]
        if job.deferredFailure:
            await fail(job, UnrecoverableError(job.deferredFailure), token)
            return None
        worker.jobs.add((job, token))
        controller = worker.lockManager.track_job(
            job.id, token, int(time.time() * 1000), should_create_controller=worker._processor_wants_signal
        )
        if controller is not None:
            result = await worker.processor(job, token, controller.signal)
        else:
            result = await worker.processor(job, token)
        if not worker.forceClosing:
            following = await complete(job, result, token)
            job.returnvalue = result
            job.attemptsMade = job.attemptsMade + 1
        worker.emit("completed", job, result)
    except (DelayedError, WaitingChildrenError):
        return None
    except Exception as err:
        try:
            if not worker.forceClosing:
                await fail(job, err, token)
            else:
                worker.emit("failed", job, err)
        except Exception as err2:
            worker.emit("error", err2, job)
        return None
    finally:
        worker.jobs.discard((job, token))
        worker.lockManager.untrack_job(job.id)
    return following


# --- redis-py connections ------------------------------------------------------------------------
# A `redis.asyncio.RedisCluster` has no `connection_pool`: each `ClusterNode` makes its own
# connections from its `connection_class` and `connection_kwargs` (public attributes), and
# new nodes copy the client's `get_connection_kwargs()`. So a setting that must reach every
# connection of a cluster client goes into the client's kwargs and every known node's.


def is_cluster(client: Any) -> bool:
    """A redis-py asyncio `RedisCluster` (itself, or inside a bullmq `RedisConnection`) or one
    of its pipelines."""
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster

    return isinstance(_client(client), (RedisCluster, ClusterPipeline))


def _client(connection: Any) -> Any:
    """A redis client, from itself or from a bullmq `RedisConnection` (its `conn`)."""
    return getattr(connection, "conn", connection)


def _kwargs_dicts(connection: Any) -> list[dict[str, Any]]:
    """Every dict new connections of this client are made from: the pool's, or with a
    cluster the client's (for nodes found later) and each known node's."""
    client = _client(connection)
    if is_cluster(client):
        return [client.get_connection_kwargs(), *(node.connection_kwargs for node in client.get_nodes())]
    kwargs = pool_kwargs(client)
    return [kwargs] if kwargs is not None else []


def pool_kwargs(connection: Any) -> dict[str, Any] | None:
    """The keyword arguments the client's pool makes new connections with (public in redis-py;
    a cluster client's own `get_connection_kwargs()`)."""
    client = _client(connection)
    if is_cluster(client):
        return dict(client.get_connection_kwargs())
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else None


def existing_connections(connection: Any) -> list[Any]:
    """Every connection a client holds now: redis-py has no API to list a pool's connections
    (`_available_connections`, `_in_use_connections`), nor a single-connection client's, nor
    a cluster node's (`ClusterNode._connections`)."""
    client = _client(connection)
    if is_cluster(client):
        return [conn for node in client.get_nodes() for conn in getattr(node, "_connections", [])]
    pool = getattr(client, "connection_pool", None)
    found = [getattr(client, "connection", None)]
    if pool is not None:
        found += [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
    return [conn for conn in found if conn is not None]


def set_read_timeout(connection: Any, seconds: float) -> None:
    """Give every connection of a client, now and later, a read timeout of `seconds`.
    redis-py sets `socket_timeout` per client only when it is made."""
    for kwargs in _kwargs_dicts(connection):
        kwargs["socket_timeout"] = seconds
    for conn in existing_connections(connection):
        conn.socket_timeout = seconds


def keep_client_name(connection: Any, name: str) -> None:
    """Make every connection of a client, now and later, connect as `name`.

    redis-py sends a name on connect only from a connection's own `client_name`, and bullmq's
    `set_client_name` writes it only in the pool's kwargs, after its single connection exists:
    after a Redis restart the reconnected worker connection was anonymous."""
    for kwargs in _kwargs_dicts(connection):
        kwargs["client_name"] = name
    for conn in existing_connections(connection):
        conn.client_name = name


def escape_undecodable(connection: Any) -> None:
    """Connections of this client (made on first use) read bytes that are not UTF-8 as surrogate escapes."""
    for kwargs in _kwargs_dicts(connection):
        if kwargs.get("decode_responses"):
            kwargs["encoding_errors"] = "surrogateescape"


def add_connection_mixin(connection: Any, mixin: type) -> None:
    """Make every connection of a client, now and later, an instance of `mixin` too.

    redis-py has no hook around a connection's send; its pool (a cluster's nodes) makes
    connections from `connection_class`, which is replaced here, and connections already made
    (a client given to bullmq may have connected) get the new class in place."""
    client = _client(connection)
    if is_cluster(client):
        holders: list[Any] = list(client.get_nodes())
        kwargs = client.get_connection_kwargs()
        from redis.asyncio.connection import Connection

        original = kwargs.get("connection_class") or (holders[0].connection_class if holders else Connection)
        if issubclass(original, mixin):
            return
        combined = _combined(mixin, original)
        kwargs["connection_class"] = combined
        for node in holders:
            if node.connection_class is original:
                node.connection_class = combined
    else:
        pool = getattr(client, "connection_pool", None)
        if pool is None or issubclass(pool.connection_class, mixin):
            return
        original = pool.connection_class
        combined = _combined(mixin, original)
        pool.connection_class = combined
    for conn in existing_connections(connection):
        if type(conn) is original:
            conn.__class__ = combined


def _combined(mixin: type, original: type) -> type:
    return type(f"{mixin.__name__}{original.__name__}", (mixin, original), {"__slots__": ()})


async def cluster_node(client: Any, key: str) -> Any:
    """The `ClusterNode` (master) that owns `key`'s slot, as the client's slot map says now.
    `get_node_from_key` is public but reads the map without first building it."""
    await client.initialize()
    return client.get_node_from_key(key)


async def refresh_slots(client: Any, error: BaseException) -> None:
    """Update a cluster client's slot map after `error` on a connection of bullwait's own. A
    failure to read the map is left to the next command, which finds out and refreshes again.

    redis-py applies MOVED only to commands it sends itself (`NodesManager.move_slot`, not
    API); anything else (a lost node, CLUSTERDOWN) re-reads the whole map on the next
    command, as redis-py's own error handling does by setting `_initialize`."""
    from redis.exceptions import MovedError

    if not is_cluster(client):
        return
    with contextlib.suppress(Exception):
        if isinstance(error, MovedError):
            await client.nodes_manager.move_slot(error)
            return
        client._initialize = True
        await client.initialize()


async def reset_cluster_connections(client: Any) -> None:
    """Reset a cluster client's topology without cutting the commands in flight.

    What redis-py's own reset (`RedisCluster.aclose()`) is for: the slot map is read again
    before the next command (`_initialize`, as `refresh_slots` sets it) and no connection
    keeps state from the old topology. But it also disconnects connections other tasks are
    sending or reading on. Here idle connections close now and those in use close once their
    command is done, through the two `ClusterNode` methods redis-py's own error handling
    uses for one node (`update_active_connections_for_reconnect`, `disconnect_free_connections`);
    a cluster client has no API for either."""
    client._initialize = True
    for node in client.get_nodes():
        node.update_active_connections_for_reconnect()
        await node.disconnect_free_connections()


async def new_connection(client: Any, key: str | None = None, **overrides: Any) -> Any:
    """A connection made like the client's pool makes them, outside the pool (not shared).
    With a cluster client, to the master that owns `key`'s slot."""
    if is_cluster(client):
        if key is None:
            raise ValueError("a cluster connection needs the key whose slot it serves")
        node = await cluster_node(client, key)
        return node.connection_class(**{**node.connection_kwargs, **overrides})
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, **overrides})


def stream_writer(conn: Any) -> asyncio.StreamWriter | None:
    """The connection's asyncio writer, to write calls without waiting for the socket.

    redis-py's `send_packed_command` drains the socket after every write and has no way to
    write several calls from several tasks back to back; its `_writer` is the stream under it."""
    writer = getattr(conn, "_writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


@asynccontextmanager
async def node_connection(client: Any, host: str, port: int) -> AsyncIterator[Any]:
    """A connection of the cluster node at `host:port` (one an ASK names), from its own
    connections (`ClusterNode.acquire_connection` / `release`: the cluster has no pool API)."""
    node = client.get_node(host=host, port=port)
    if node is None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError(f"cluster node {host}:{port} is not in the client's map yet")
    conn = node.acquire_connection()
    try:
        yield conn
    finally:
        node.release(conn)


@asynccontextmanager
async def pool_connection(client: Any, key: str | None = None) -> AsyncIterator[Any]:
    """A connection of the client's pool, for commands that must share one (MULTI and WAIT).
    With a cluster client, one of the connections of the node that owns `key`'s slot
    (`ClusterNode.acquire_connection` / `release`: the cluster has no pool API)."""
    if is_cluster(client):
        if key is None:
            raise ValueError("a cluster connection needs the key whose slot it serves")
        node = await cluster_node(client, key)
        conn = node.acquire_connection()
        try:
            yield conn
        finally:
            node.release(conn)
        return
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        yield conn
    finally:
        await pool.release(conn)
