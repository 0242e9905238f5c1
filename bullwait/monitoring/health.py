"""`/health/queues`: the NestJS module's `getQueueHealth()`, with two more reasons to be unhealthy.

Unhealthy (HTTP 503) when Redis does not answer, when a queue's failed set reaches
`HEALTH_MAX_FAILED` (the NestJS module's `failed < 100`), or when a queue holding jobs (waiting,
prioritized, delayed or active) has no worker connected, Node or Python. Worker counts
come from `CLIENT LIST`; where the server forbids it the rule is skipped and
`workers` is null. Counts are the ones `bullwait stats` shows (one reader,
bullwait.ops.snapshot): `waiting` is Node's getJobCounts `waiting`.
"""

from __future__ import annotations

from typing import Any

from bullwait.ops.snapshot import QueueSnapshot


def queue_report(snap: QueueSnapshot) -> dict[str, Any]:
    return {
        "name": snap.name,
        "waiting": snap.waiting,
        "active": snap.active,
        "completed": snap.completed,
        "failed": snap.failed,
        "delayed": snap.delayed,
        "prioritized": snap.prioritized,
        "paused": snap.paused,
        "workers": snap.workers,
    }


def problems(snap: QueueSnapshot, max_failed: int) -> list[str]:
    found = []
    if snap.failed >= max_failed:
        found.append(f"{snap.name}: {snap.failed} failed jobs (threshold HEALTH_MAX_FAILED={max_failed})")
    if snap.workers == 0 and snap.has_jobs:
        found.append(f"{snap.name}: has jobs but no worker is connected")
    return found


def evaluate(snapshots: list[QueueSnapshot], max_failed: int) -> dict[str, Any]:
    """The health document for queues Redis answered for."""
    reasons = [p for snap in snapshots for p in problems(snap, max_failed)]
    return {"healthy": not reasons, "queues": [queue_report(s) for s in snapshots], "problems": reasons}


def redis_down(queues: list[str], reason: str) -> dict[str, Any]:
    """The health document when Redis did not answer."""
    return {
        "healthy": False,
        "queues": [{"name": q} for q in queues],
        "problems": [f"redis: {reason}"],
    }


class LoopWatch:
    """The worker loops of this process, as `/health/live` sees them: each worker reports
    how long its loop has been failing (`BullwaitWorker.failing_for`). Under a supervisor the
    serving process also sees the others' (`peers`, bullwait.monitoring.processes)."""

    def __init__(self, peers: Any = None) -> None:
        self.workers: dict[str, Any] = {}
        self.peers = peers

    def add(self, queue: str, worker: Any) -> None:
        self.workers[queue] = worker

    def failures(self) -> list[tuple[str, float, str]]:
        """(queue, seconds failing, last error) for each worker; 0 seconds while it works."""
        return [
            (queue, float(worker.failing_for()), getattr(worker, "last_failure", "") or "unknown error")
            for queue, worker in self.workers.items()
        ]

    def failing(self, after_seconds: float) -> list[str]:
        """One line per worker whose loop has failed for `after_seconds` or more, here or in
        another process of the supervisor."""
        found = [
            f"{queue}: worker loop failing for {seconds:.0f} s ({last})"
            for queue, seconds, last in self.failures()
            if seconds >= after_seconds
        ]
        if self.peers is not None:
            found += self.peers.failing(after_seconds)
        return found
