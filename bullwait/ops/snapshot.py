"""Queue counts read straight from Redis in one round trip, for metrics and health.

`read_snapshots` sends one pipeline per call for all queues: the length of each BullMQ
list/set, BullMQ's own per-minute metrics counters, the earliest delayed job and the
pause flag of every queue, plus one `CLIENT LIST` to count workers. It reads what every
runtime wrote (Node producers and workers included), never KEYS/SCAN.

Key layout (bullmq 6, Node and Python alike), for queue `q` under prefix `p`:
`p:q:wait` / `paused` / `active` (lists), `delayed` / `prioritized` / `failed` /
`completed` / `waiting-children` (sorted sets), `p:q:meta` (hash, `paused` field),
`p:q:metrics:completed` / `metrics:failed` (hash, `count` field, written by workers
started with the `metrics` option). Delayed scores are `due_ms * 0x1000 + counter`.
"""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

DELAYED_SCORE_SHIFT = 0x1000  # bullmq: score = timestamp_ms * 0x1000 + per-ms counter

# The states Node bullmq 6's `Queue.getJobCounts()` returns by default, in its order.
NODE_STATES = ("active", "completed", "delayed", "failed", "prioritized", "waiting", "waiting-children")

_LISTS = ("wait", "paused", "active")
_ZSETS = ("delayed", "prioritized", "waiting-children", "failed", "completed")


@dataclass
class QueueSnapshot:
    """What Redis held for one queue at one moment."""

    name: str
    wait: int = 0
    paused_jobs: int = 0
    active: int = 0
    delayed: int = 0
    prioritized: int = 0
    waiting_children: int = 0
    failed: int = 0
    completed: int = 0
    completed_total: int = 0
    failed_total: int = 0
    next_delayed_ms: float | None = None
    paused: bool = False
    workers: int | None = None  # None: CLIENT LIST not allowed or not supported
    worker_names: list[str] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        """Jobs ready for a worker: the wait list, or the paused list while paused."""
        return self.wait + self.paused_jobs

    @property
    def has_jobs(self) -> bool:
        return (self.waiting + self.prioritized + self.delayed + self.active) > 0

    def overdue_seconds(self, now_ms: float | None = None) -> float:
        """How long the earliest delayed job has been due (0 if none is due)."""
        if self.next_delayed_ms is None:
            return 0.0
        now = time.time() * 1000 if now_ms is None else now_ms
        return max(0.0, (now - self.next_delayed_ms) / 1000)

    def node_counts(self) -> dict[str, int]:
        """Counts under the state names Node's `getJobCounts()` uses."""
        return {
            "active": self.active,
            "completed": self.completed,
            "delayed": self.delayed,
            "failed": self.failed,
            "prioritized": self.prioritized,
            "waiting": self.wait,
            "waiting-children": self.waiting_children,
        }


def _queue_commands(pipe: Any, base: str) -> int:
    """Queue one queue's reads on `pipe`; returns how many commands were queued."""
    pipe.llen(base + "wait")
    pipe.lindex(base + "wait", -1)  # a Node 4.x producer may leave a `0:` marker here
    pipe.llen(base + "paused")
    pipe.llen(base + "active")
    for zset in _ZSETS:
        pipe.zcard(base + zset)
    pipe.hget(base + "metrics:completed", "count")
    pipe.hget(base + "metrics:failed", "count")
    pipe.zrange(base + "delayed", 0, 0, withscores=True)
    pipe.hexists(base + "meta", "paused")
    return 13


def _parse_queue(name: str, values: list[Any]) -> QueueSnapshot:
    for value in values:
        if isinstance(value, Exception):
            raise value
    wait, marker, paused_jobs, active, delayed, prioritized, children, failed, completed = values[:9]
    completed_total, failed_total, first_delayed, paused = values[9:13]
    if isinstance(marker, str) and marker.startswith("0:") and wait:
        wait -= 1
    next_ms = None
    if first_delayed:
        next_ms = float(first_delayed[0][1]) // DELAYED_SCORE_SHIFT
    return QueueSnapshot(
        name=name,
        wait=int(wait),
        paused_jobs=int(paused_jobs),
        active=int(active),
        delayed=int(delayed),
        prioritized=int(prioritized),
        waiting_children=int(children),
        failed=int(failed),
        completed=int(completed),
        completed_total=int(completed_total or 0),
        failed_total=int(failed_total or 0),
        next_delayed_ms=next_ms,
        paused=bool(paused),
    )


async def read_snapshots(client: Any, prefix: str, queues: Iterable[str], workers: bool = True) -> list[QueueSnapshot]:
    """One pipelined round trip for every queue (and CLIENT LIST). Raises redis errors."""
    names = list(queues)
    async with client.pipeline(transaction=False) as pipe:
        sizes = [_queue_commands(pipe, f"{prefix}:{name}:") for name in names]
        if workers:
            pipe.client_list()
        results = await pipe.execute(raise_on_error=False)
    snapshots = []
    offset = 0
    for name, size in zip(names, sizes, strict=True):
        snapshots.append(_parse_queue(name, results[offset : offset + size]))
        offset += size
    if workers and not isinstance(results[offset], Exception):
        count_queue_workers(snapshots, results[offset], prefix)
    return snapshots


def count_queue_workers(snapshots: list[QueueSnapshot], clients: list[dict[str, Any]], prefix: str) -> None:
    """Fill each snapshot's workers from CLIENT LIST, counted as `bullwait stats` counts them."""
    for snap in snapshots:
        snap.worker_names = worker_names(clients, prefix, snap.name)
        snap.workers = count_workers(clients, prefix, snap.name)[0]


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
        blocking = sum(1 for c in conns if str(c.get("cmd", "")).lower() == "bzpopmin" or "b" in str(c.get("flags", "")))
        stock += blocking if (worker and worker in node) else max(1, blocking)
    return node_only + bullwait + stock, node_only, bullwait + stock


def worker_names(clients: list[dict[str, Any]], prefix: str, queue: str) -> list[str]:
    """Distinct workers of `queue` among CLIENT LIST entries, Node and Python alike.

    bullmq-py names a worker's connections `<prefix>:<queue>[:w:<name>]`, Node
    `<prefix>:<base64(queue)>[:w:<name>]`; bullwait's workers use both (one per
    connection). Named workers count once per name; unnamed ones once per connection,
    which is what Node's `getWorkers()` does.
    """
    bases = (f"{prefix}:{queue}", f"{prefix}:{base64.b64encode(queue.encode()).decode()}")
    named: set[str] = set()
    unnamed: list[str] = []
    for entry in clients:
        client_name = str(entry.get("name") or "")
        if not client_name:
            continue
        for base in bases:
            if client_name == base:
                unnamed.append(f"(unnamed #{entry.get('id', len(unnamed))})")
                break
            if client_name.startswith(base + ":w:"):
                named.add(client_name[len(base) + 3 :])
                break
    return sorted(named) + unnamed
