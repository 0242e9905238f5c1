"""`bullwait doctor`: is this Redis fit for BullMQ, and is each queue served?

`run_doctor` reads what it needs (INFO, TIME, CONFIG GET, CLIENT LIST, the Sentinel
topology, each queue through the one queue reader) and hands it to pure check functions,
one `Check` each: ok, warn or fail, with what to do next.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from bullwait.engine.connection import ClusterView, Topology, describe_redis, read_cluster, read_topology
from bullwait.engine.internals import is_cluster, version_tuple
from bullwait.errors import RedisUnavailable
from bullwait.ops.durations import format_ms
from bullwait.ops.presence import QueuePresence, queue_presence
from bullwait.ops.queues import Ops
from bullwait.ops.results import Check, DoctorReport
from bullwait.ops.snapshot import QueueSnapshot
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey

BULLMQ_PY_PAIRS = {"3.4": "6.4.0"}  # bullmq-py minor -> Node bullmq whose Lua it ships


async def run_doctor(settings: Settings, keys: Iterable[QueueKey] | None = None) -> DoctorReport:
    """The doctor, including an unreachable Redis as a failed check (exit code 2)."""
    try:
        ops = await Ops.open(settings)
    except RedisUnavailable as exc:
        return DoctorReport([Check("fail", "redis", str(exc)), *topology_checks(await read_topology(settings))])
    async with ops:
        try:
            return await diagnose(ops, keys)
        except ResponseError as exc:
            return DoctorReport(
                [
                    Check(
                        "fail",
                        "redis",
                        f"Redis refused a command the checks need ({exc}); "
                        "run the doctor as a user allowed INFO, TIME, CLIENT LIST and EVALSHA",
                    )
                ]
            )
        except (RedisError, OSError) as exc:
            return DoctorReport([Check("fail", "redis", f"Redis stopped answering during the checks: {exc}")])


async def diagnose(ops: Ops, keys: Iterable[QueueKey] | None = None) -> DoctorReport:
    """Every check, on an open Ops: Redis, its configuration, Sentinel, then each queue as `stats` reads it."""
    checks: list[Check] = []
    t0 = time.time()
    seconds, micros = await ops.client.time()
    t1 = time.time()
    server = await ops.client.info("server")
    checks.append(_check_version(ops.redis_version, describe_redis(ops.settings)))
    topology = await read_topology(ops.settings, ops.client)
    checks.extend(topology_checks(topology))
    checks.extend(durability_checks(topology, ops.settings.bullwait_wait_replicas))
    if is_cluster(ops.client):
        checks.extend(cluster_checks(await read_cluster(ops.client)))
        # Memory is per shard: each master holds its slots' keys (and its own maxmemory).
        memories = await ops.client.info("memory", target_nodes=RedisCluster.PRIMARIES)
    else:
        memories = {"": await ops.client.info("memory")}
    checks.extend(_per_node(_check_policy, memories, lambda m: (str(m.get("maxmemory_policy", "unknown")),)))
    checks.append(_check_hz(int(server.get("configured_hz", server.get("hz", 10)))))
    redis_ms = int(seconds) * 1000 + int(micros) / 1000
    checks.append(_check_clock(((t0 + t1) / 2) * 1000 - redis_ms, (t1 - t0) * 1000))
    checks.extend(
        _per_node(_check_memory, memories, lambda m: (int(m.get("used_memory", 0)), int(m.get("maxmemory", 0))))
    )
    checks.append(_check_listpack(await _hash_value_limit(ops.client)))
    wanted = list(keys) if keys else list(QueueKey)
    checks.append(_check_names([ops.queue_name(k) for k in wanted]))
    all_stats = await ops.stats(wanted)
    workers = sum(s.workers or 0 for s in all_stats)
    checks.append(_check_presence(await queue_presence(ops.client, ops.settings), workers))
    for stats in all_stats:
        checks.extend(_queue_checks(stats, ops.settings))
    return DoctorReport(checks)


async def _hash_value_limit(client: Any) -> int | None:
    """`hash-max-listpack-value` (Redis 7) or `-ziplist-value` (6.2); None if CONFIG is not allowed."""
    for name in ("hash-max-listpack-value", "hash-max-ziplist-value"):
        try:
            found = await client.config_get(name)
        except RedisError:
            return None
        if found.get(name) is not None:
            return int(found[name])
    return None


def topology_checks(topology: Topology | None) -> list[Check]:
    """With Sentinel: the sentinels that answer, the master they name, each replica's link and lag."""
    if topology is None:
        return []
    total = len(topology.sentinels)
    silent = [f"{s.address} ({s.error})" for s in topology.sentinels if not s.answering]
    if not silent:
        checks = [Check("ok", "sentinels", f"{total}/{total} answer")]
    else:
        status = "fail" if topology.answering == 0 else "warn"
        checks = [
            Check(
                status,
                "sentinels",
                f"{topology.answering}/{total} answer; not: {', '.join(silent)}; a failover needs a majority of them",
            )
        ]
    if topology.master is None:
        return checks
    checks.append(Check("ok", "sentinel master", f"{topology.master_name!r} at {topology.master}"))
    if not topology.replicas:
        checks.append(Check("warn", "sentinel replicas", "none: a failover has nowhere to go; add a replica"))
    for replica in topology.replicas or []:
        late = replica.link != "ok" or (replica.lag_seconds or 0) > REPLICA_LAG_WARN_SECONDS
        advice = "; a failover now would lose what it has not received" if late else ""
        checks.append(Check("warn" if late else "ok", "sentinel replica", replica.describe() + advice))
    return checks


REPLICA_LAG_WARN_SECONDS = 10


def cluster_checks(view: ClusterView) -> list[Check]:
    """On a Redis Cluster: every node answers, every slot is served, each master has a replica."""
    line = view.summary()
    if view.state != "ok" or view.slots_ok < 16384:
        return [Check("fail", "cluster", f"{line}: some slots are not served; bring their nodes back")]
    if view.answering < len(view.nodes):
        return [Check("warn", "cluster", f"{line}: a master that fails now may have no replica to take over")]
    if len(view.replicas()) < len(view.masters()):
        return [Check("warn", "cluster", f"{line}: a master without a replica takes its slots down when it fails")]
    return [Check("ok", "cluster", line)]


def _per_node(check: Any, infos: dict[str, Any], read: Any) -> list[Check]:
    """`check` on each node's INFO (keyed by node address; one node: its check as it is). On a
    cluster every master gets its line, named, unless all say the same."""
    results = {node: check(*read(info)) for node, info in sorted(infos.items())}
    if len(results) == 1:
        return list(results.values())
    if len({(c.status, c.detail) for c in results.values()}) == 1:
        first = next(iter(results.values()))
        return [Check(first.status, first.name, f"every master ({len(results)}): {first.detail}")]
    return [Check(c.status, c.name, f"{node}: {c.detail}") for node, c in results.items()]


def durability_checks(topology: Topology | None, wait_replicas: int) -> list[Check]:
    """With Sentinel and BULLWAIT_WAIT_REPLICAS: whether WAIT can keep its promise here.

    A write WAIT counts as confirmed survives a failover only if the promoted replica has
    it. A replica still following the old master after another was promoted can confirm a
    write the old master took too late, which the failover then drops (seen in the
    two-replica failover test): every replica must confirm."""
    if topology is None or topology.master is None or wait_replicas <= 0 or topology.replicas is None:
        return []
    have = len(topology.replicas)
    name = f"BULLWAIT_WAIT_REPLICAS={wait_replicas}"
    if wait_replicas > have:
        return [
            Check(
                "fail",
                "durable writes",
                f"{name} but the master has {have} replica(s): every producer add, "
                "send claim and waitlist change fails; add replicas or lower it",
            )
        ]
    if wait_replicas < have:
        return [
            Check(
                "warn",
                "durable writes",
                f"{name} with {have} replicas: a write one replica confirmed can still "
                f"be lost in a failover; set it to {have} (then one replica down stops durable writes)",
            )
        ]
    if have == 1:
        return [
            Check(
                "warn",
                "durable writes",
                f"{name} with one replica: after a failover the new master has no "
                "replica until the old one rejoins, and durable writes wait (or fail) until then; "
                "a second replica, with BULLWAIT_WAIT_REPLICAS=2, avoids the wait",
            )
        ]
    return [Check("ok", "durable writes", f"{name}: every replica confirms each write")]


def _check_version(version: str, where: str) -> Check:
    if version_tuple(version) >= (6, 2):
        return Check("ok", "redis", f"PONG from {where}, Redis {version}")
    return Check("fail", "redis", f"Redis {version} at {where}: BullMQ needs Redis 6.2 or newer; upgrade Redis")


def _check_policy(policy: str) -> Check:
    if policy == "noeviction":
        return Check("ok", "maxmemory-policy", "noeviction")
    level = "fail" if policy.startswith("allkeys") else "warn"
    return Check(
        level,
        "maxmemory-policy",
        f"{policy}: under memory pressure Redis may evict job keys or locks (lost timers, double runs); "
        "set `maxmemory-policy noeviction`",
    )


def _check_hz(hz: int) -> Check:
    """Redis ends blocking waits on its `hz` ticks: that bounds how late a due timer wakes a
    Node worker (measured on Redis 7.0: hz 10 mean 49 ms / max 100 ms, hz 100 mean 7 ms /
    max 13 ms). bullwait's own workers wait the last 110 ms before a due time in their
    event loop, ~1 ms late at any hz. The default meets the NestJS module's ±100 ms: not a warning.
    """
    tick = 1000 // max(hz, 1)
    if hz >= 100:
        return Check("ok", "hz", f"hz {hz}: due timers wake Node workers within ~{tick} ms")
    if hz >= 10:
        return Check(
            "ok",
            "hz",
            f"hz {hz}: due timers wake Node workers up to ~{tick} ms late (bullwait workers ~1 ms); "
            "for ~10 ms on Node too set `hz 100` in redis.conf (or CONFIG SET hz 100)",
        )
    return Check("warn", "hz", f"hz {hz}: due timers may wake Node workers ~{tick} ms late; set `hz 100` in redis.conf")


def _check_listpack(limit: int | None) -> Check:
    """A pending timer's job hash has `data` and `opts` values over Redis's default 64-byte
    listpack limit, so Redis stores it as a full hash: ~1,070 bytes per timer (~1,270 with
    UUID ids), ~670 (~930) with `hash-max-listpack-value 512` (bench/ at 100,000 timers)."""
    if limit is None:
        return Check("ok", "memory-encoding", "CONFIG GET not allowed for this user; skipped")
    if limit >= 512:
        return Check(
            "ok", "memory-encoding", f"hash-max-listpack-value {limit}: job hashes stay compact (~670 B per timer)"
        )
    return Check(
        "ok",
        "memory-encoding",
        f"hash-max-listpack-value {limit}: each pending timer takes ~1,070 B; "
        "`hash-max-listpack-value 512` in redis.conf brings it to ~670 B",
    )


def _check_clock(skew_ms: float, rtt_ms: float) -> Check:
    direction = "ahead of" if skew_ms > 0 else "behind"
    detail = f"this host is {abs(skew_ms):.0f} ms {direction} Redis TIME (round trip {rtt_ms:.0f} ms)"
    if abs(skew_ms) <= max(100.0, rtt_ms):
        return Check("ok", "clock", detail)
    level = "fail" if abs(skew_ms) > 1000 else "warn"
    return Check(level, "clock", detail + "; delayed jobs are scored with each producer's clock: sync clocks with NTP")


def _check_memory(used: int, maxmemory: int) -> Check:
    if not maxmemory:
        return Check("ok", "memory", f"used {_bytes(used)}, no maxmemory limit (Redis grows until the host runs out)")
    ratio = used / maxmemory
    detail = f"used {_bytes(used)} of maxmemory {_bytes(maxmemory)} ({ratio:.0%})"
    if ratio >= 0.9:
        return Check(
            "fail", "memory", detail + ": near OOM, new jobs will be refused; clean finished jobs or raise maxmemory"
        )
    if ratio >= 0.75:
        return Check("warn", "memory", detail + ": clean finished jobs (`bullwait clean`) or raise maxmemory")
    return Check("ok", "memory", detail)


def _check_presence(presence: QueuePresence, workers: int) -> Check:
    if not presence.checked:
        return Check("ok", "queues-found", "EXISTS not allowed for this user; skipped")
    if presence.found:
        found = ", ".join(presence.found)
        return Check("ok", "queues-found", f"{found} in {presence.where}, prefix {presence.prefix!r}")
    if workers:
        return Check("ok", "queues-found", f"no jobs yet in {presence.where}, but {workers} worker(s) serve its queues")
    return Check("warn", "queues-found", presence.warning() or "")


def _check_names(names: list[str]) -> Check:
    bad = [n for n in names if ":" in n]
    if not bad:
        return Check("ok", "queue-names", "colon-free: Node bullmq 5.12.12+ and Bull Board can open them")
    return Check(
        "warn",
        "queue-names",
        f"{', '.join(bad)}: Node bullmq >= 5.12.12 refuses names with ':' (fine for Node 4.x producers only); "
        "move to BULLWAIT_QUEUE_NAMES=current",
    )


def _queue_checks(s: QueueSnapshot, settings: Settings) -> list[Check]:
    q = s.name
    out = []
    if s.paused:
        out.append(Check("warn", f"{q}/paused", f"paused: nothing is processed; `bullwait resume {q}` when intended"))
    else:
        out.append(Check("ok", f"{q}/paused", "not paused"))
    if s.workers is None:
        out.append(
            Check("warn", f"{q}/workers", "cannot tell: the server refused CLIENT LIST (allow it for this user)")
        )
    elif not s.workers:
        out.append(
            Check("warn", f"{q}/workers", f"no worker (Node or Python) serves it; start `bullwait worker --queue {q}`")
        )
    else:
        out.append(Check("ok", f"{q}/workers", f"{s.workers} (Node {s.workers_node}, Python {s.workers_python})"))
    if s.overdue:
        late = -(s.next_delayed_in_ms or 0)
        level = "fail" if late > 60_000 else "warn"
        why = (
            "the queue is paused"
            if s.paused
            else "no worker is promoting them"
            if not s.workers
            else "workers are behind"
        )
        out.append(
            Check(
                level,
                f"{q}/overdue",
                f"{s.overdue} delayed job(s) past due, the oldest by {format_ms(late)}: {why}; "
                "check workers (`bullwait stats`) or promote them (`bullwait promote`)",
            )
        )
    else:
        nxt = "none delayed" if s.next_delayed_in_ms is None else f"next due in {format_ms(s.next_delayed_in_ms)}"
        out.append(Check("ok", f"{q}/overdue", f"no delayed job past due ({s.delayed} delayed, {nxt})"))
    if s.stalled:
        out.append(
            Check(
                "warn",
                f"{q}/stalled",
                f"{s.stalled} active job(s) without a lock (their worker died); a running "
                "worker moves them back to wait within its stalled interval (BULLWAIT_STALLED_INTERVAL_MS); "
                "start one if none runs",
            )
        )
    else:
        scanned = "" if s.active <= s.active_scanned else f" (first {s.active_scanned} checked)"
        out.append(Check("ok", f"{q}/stalled", f"{s.active} active, all locked{scanned}"))
    limit = settings.health_max_failed
    if s.failed > limit:
        out.append(
            Check(
                "warn",
                f"{q}/failed",
                f"{s.failed} failed (over HEALTH_MAX_FAILED={limit}): inspect "
                f"`bullwait jobs list {q} --status failed`, then `bullwait retry --queue {q}` or `bullwait clean`",
            )
        )
    else:
        out.append(Check("ok", f"{q}/failed", f"{s.failed} failed (limit {limit})"))
    out.append(_check_meta_version(q, s.meta_version, s.workers_node or 0))
    return out


def bullmq_py_pairing() -> tuple[str, str | None]:
    """(installed bullmq-py version, Node bullmq version whose Lua it ships, if known)."""
    try:
        installed = importlib.metadata.version("bullmq")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        installed = "unknown"
    minor = ".".join(installed.split(".")[:2])
    return installed, BULLMQ_PY_PAIRS.get(minor)


def _check_meta_version(q: str, version: str | None, node_workers: int) -> Check:
    installed, paired = bullmq_py_pairing()
    pair = f"bullmq-py {installed} ships the Lua of Node bullmq {paired or '?'}"
    name = f"{q}/bullmq-version"
    if not version:
        return Check("ok", name, f"no Node bullmq has written this queue's meta yet; {pair}")
    lib, _, number = version.rpartition(":")
    major = version_tuple(number)[0]
    paired_major = version_tuple(paired or "6")[0]
    if lib and "bullmq" not in lib:
        return Check("warn", name, f"meta written by {version!r}, not Node bullmq; {pair}")
    if major == paired_major:
        return Check("ok", name, f"{version} pairs with {pair}")
    if major <= 4:
        if node_workers:
            return Check(
                "fail",
                name,
                f"{version} with {node_workers} Node worker(s): Node 4.x workers and Python "
                f"workers must not share a queue (v5 changed the wake-up marker); upgrade Node to 6.x",
            )
        return Check(
            "warn",
            name,
            f"{version}: fine as a producer for Python workers, but never run Node 4.x "
            f"workers on this queue; upgrade Node to {paired_major}.x ({pair})",
        )
    return Check("warn", name, f"{version} is not the tested pairing ({pair}); run Node bullmq {paired_major}.x")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
