"""The one queue reader: every count bullwait shows (`bullwait stats`, `doctor`, `/metrics`,
`/health/queues`) comes from `read_snapshots`, so they cannot disagree.

One pipeline per call: one call of the reader script (bullwait.ops.scripts.INSPECT_LUA)
per queue, plus one `CLIENT LIST` to count workers. It reads what every runtime wrote
(Node producers and workers included), never KEYS/SCAN.

One definition of each count, Node bullmq's `Queue.getJobCounts()`:
`waiting` is the wait list (less a legacy `0:` marker), `paused_list` the legacy paused
list (jobs a Node bullmq < 5 queue moved there when paused; newer ones keep paused jobs in
wait), sets are their sizes; `paused` is Node's `isPaused()`: the `paused` field of the
queue's `meta` hash exists, whatever its value (BullMQ's own Lua tests it with HEXISTS).

Key layout (bullmq 6, Node and Python alike), for queue `q` under prefix `p`:
`p:q:wait` / `paused` / `active` (lists), `delayed` / `prioritized` / `failed` /
`completed` / `waiting-children` (sorted sets), `p:q:meta` (hash, `paused` and `version`
fields), `p:q:metrics:completed` / `metrics:failed` (hash, `count` field, written by
workers started with the `metrics` option). Delayed scores are `due_ms * 0x1000 + counter`.
"""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from bullwait.engine.connection import client_list as list_clients
from bullwait.engine.internals import is_cluster
from bullwait.ops.scripts import INSPECT_KEYS, INSPECT_LUA, INSPECT_SHA

# The states Node bullmq 6's `Queue.getJobCounts()` returns by default, in its order.
NODE_STATES = ("active", "completed", "delayed", "failed", "prioritized", "waiting", "waiting-children")

SCAN_CAP = 1000  # active / prioritized entries one read looks at (stalled, oldest waiting)
OVERDUE_GRACE_MS = 1000  # a delayed job due longer ago than this should have run


@dataclass
class QueueSnapshot:
    """What Redis held for one queue at one moment: counts equal to Node bullmq's
    `getJobCounts`, plus what operators and monitoring ask next. Times are Redis's clock."""

    name: str
    waiting: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    delayed: int = 0
    prioritized: int = 0
    paused: bool = False
    workers: int | None = None  # None: CLIENT LIST refused by the server (or not read)
    workers_node: int | None = None
    workers_python: int | None = None
    waiting_children: int = 0
    paused_list: int = 0  # jobs in the legacy `paused` list (Node bullmq < 5 paused queues)
    oldest_waiting_ms: int | None = None
    next_delayed_in_ms: int | None = None  # negative: the earliest delayed job is overdue
    overdue: int = 0  # delayed jobs due more than OVERDUE_GRACE_MS ago
    stalled: int = 0
    active_scanned: int = 0
    meta_version: str | None = None
    completed_total: int = 0  # BullMQ's worker metrics counters
    failed_total: int = 0

    @property
    def has_jobs(self) -> bool:
        """Jobs a worker should take some time: waiting (or in the legacy paused list), prioritized, delayed, active."""
        return (self.waiting + self.paused_list + self.prioritized + self.delayed + self.active) > 0

    def overdue_seconds(self) -> float:
        """How long the earliest delayed job has been due (0 if none is due)."""
        if self.next_delayed_in_ms is None:
            return 0.0
        return max(0.0, -self.next_delayed_in_ms / 1000)

    def node_counts(self) -> dict[str, int]:
        """Counts under the state names Node's `getJobCounts()` uses."""
        return {
            "active": self.active,
            "completed": self.completed,
            "delayed": self.delayed,
            "failed": self.failed,
            "prioritized": self.prioritized,
            "waiting": self.waiting,
            "waiting-children": self.waiting_children,
        }

    def to_json(self) -> dict[str, Any]:
        """`bullwait stats --json`: times in seconds, monitoring-only fields left out."""
        data = asdict(self)
        for name in (
            "active_scanned",
            "oldest_waiting_ms",
            "next_delayed_in_ms",
            "completed_total",
            "failed_total",
        ):
            data.pop(name)
        data["oldest_waiting_s"] = _seconds(self.oldest_waiting_ms)
        data["next_delayed_in_s"] = _seconds(self.next_delayed_in_ms)
        return data


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


def _parse_queue(name: str, reply: Any) -> QueueSnapshot:
    if isinstance(reply, Exception):
        raise reply
    now, wait, active, delayed, prio, done, failed, children, paused_list, paused = (int(v) for v in reply[:10])
    version, oldest, next_due, overdue, stalled, scanned, done_total, failed_total = reply[10:18]
    oldest, next_due = int(oldest), int(next_due)
    return QueueSnapshot(
        name=name,
        waiting=wait,
        active=active,
        completed=done,
        failed=failed,
        delayed=delayed,
        prioritized=prio,
        paused=paused == 1,
        waiting_children=children,
        paused_list=paused_list,
        oldest_waiting_ms=max(0, now - oldest) if oldest >= 0 else None,
        next_delayed_in_ms=next_due - now if next_due >= 0 else None,
        overdue=int(overdue),
        stalled=int(stalled),
        active_scanned=int(scanned),
        meta_version=version or None,
        completed_total=int(done_total or 0),
        failed_total=int(failed_total or 0),
    )


async def read_snapshots(client: Any, prefix: str, queues: Iterable[str]) -> list[QueueSnapshot]:
    """Every queue, and CLIENT LIST to count their workers, in one pipelined round trip
    (workers stay None if the server refuses CLIENT LIST). Raises redis errors of the queue reads."""
    names = list(queues)
    results = await _read(client, prefix, names, True)
    listed = results[len(names)]
    if any(isinstance(reply, NoScriptError) for reply in results[: len(names)]):
        # A server that has not seen the script yet (new, restarted, failed over): load it once.
        await client.script_load(INSPECT_LUA)
        results = await _read(client, prefix, names, False)
    snapshots = [_parse_queue(name, reply) for name, reply in zip(names, results, strict=False)]
    if not isinstance(listed, Exception):
        count_queue_workers(snapshots, list(listed), prefix)
    return snapshots


async def _read(client: Any, prefix: str, names: list[str], with_clients: bool) -> list[Any]:
    """EVALSHA straight into the pipeline: redis-py's registered scripts would add a SCRIPT
    EXISTS round trip to every read. On a cluster the pipeline sends each queue's call to its
    slot's master, and CLIENT LIST (which a cluster pipeline refuses) is read from every master."""
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            base = f"{prefix}:{name}:"
            keys = [base + suffix for suffix in INSPECT_KEYS]
            # Plain EVALSHA: the same on one node, and a cluster pipeline refuses `evalsha()`.
            pipe.execute_command("EVALSHA", INSPECT_SHA, len(keys), *keys, base, SCAN_CAP, OVERDUE_GRACE_MS)
        if with_clients and not is_cluster(client):
            pipe.client_list()
        results = list(await pipe.execute(raise_on_error=False))
    if with_clients and is_cluster(client):
        try:
            results.append(await list_clients(client))
        except ResponseError as exc:  # refused (ACL): workers stay unknown, as on one node
            results.append(exc)
    return results


def count_queue_workers(snapshots: list[QueueSnapshot], clients: list[dict[str, Any]], prefix: str) -> None:
    """Fill each snapshot's workers from CLIENT LIST entries.

    On a cluster (entries of several masters, each with its `node`) a worker's connections may
    be named on more than one master, so the master with the most of the queue's workers is
    counted, as Node bullmq's getWorkers does (its blocking connection waits on the master of
    the queue's slot)."""
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in clients:
        by_node[str(entry.get("node", ""))].append(entry)
    for snap in snapshots:
        counts = {node: count_workers(entries, prefix, snap.name) for node, entries in by_node.items()}
        best = max(counts, key=lambda node: counts[node][0], default="")
        snap.workers, snap.workers_node, snap.workers_python = counts.get(best, (0, 0, 0))


def count_workers(clients: list[dict[str, Any]], prefix: str, queue: str) -> tuple[int, int, int]:
    """(total, node, python) workers of `queue` among CLIENT LIST entries.

    Node bullmq names only a worker's blocking connection `<prefix>:<base64(queue)>`
    (`...:w:<name>` when named): one such connection is one worker. bullmq-py names
    every connection of a worker `<prefix>:<queue>[:w:<name>]` (its pool may hold
    several); its blocking connection is the one that runs BZPOPMIN. BullwaitWorker
    gives its blocking connection the Node name and its main one the Python name, so a
    Node-named worker whose name also appears Python-named is a Python worker.
    """
    node_base = f"{prefix}:{base64.b64encode(queue.encode()).decode()}"
    py_base = f"{prefix}:{queue}"
    node: Counter[str] = Counter()
    python: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for client in clients:
        name = str(client.get("name") or "")
        for base, is_node in ((node_base, True), (py_base, False)):
            if name == base:
                worker = ""
            elif name.startswith(base + ":w:"):
                worker = name[len(base) + 3 :]
            else:
                continue
            if is_node:
                node[worker] += 1
            else:
                python[worker].append(client)
            break
    bullwait = sum(n for worker, n in node.items() if worker and worker in python)
    node_only = sum(node.values()) - bullwait
    stock = 0
    for worker, conns in python.items():
        blocking = sum(
            1 for c in conns if str(c.get("cmd", "")).lower() == "bzpopmin" or "b" in str(c.get("flags", ""))
        )
        stock += blocking if (worker and worker in node) else max(1, blocking)
    return node_only + bullwait + stock, node_only, bullwait + stock
