"""What the operator actions return: plain data, no rendering (bullwait.cli.render prints it).

`to_json()` is each result's stable JSON form (`--json` of the command that returns it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bullwait.ops.durations import local_time


@dataclass
class CleanResult:
    queue: str
    status: str
    removed: int
    dry_run: bool
    job_ids: list[str] = field(default_factory=list)  # the first few, for the record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MoveResult:
    """Jobs moved back to wait by `retry` (from failed) or `promote` (from delayed)."""

    queue: str
    source: str
    moved: int
    left: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PauseResult:
    queue: str
    paused: bool
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobInfo:
    """A job as stored in Redis, readable whatever wrote it; times are epoch ms."""

    queue: str
    id: str
    state: str
    name: str | None = None
    data: Any = None
    data_is_json: bool = True
    opts: dict[str, Any] = field(default_factory=dict)
    attempts_made: int = 0
    attempts_started: int = 0
    stalled_counter: int = 0
    max_attempts: int | None = None
    priority: int = 0
    delay: int = 0
    progress: Any = None
    timestamp: int | None = None
    processed_on: int | None = None
    finished_on: int | None = None
    due_at: int | None = None
    failed_reason: str | None = None
    stacktrace: list[str] = field(default_factory=list)
    returnvalue: Any = None
    processed_by: str | None = None
    locked: bool = False
    logs: list[str] = field(default_factory=list)
    logs_count: int = 0
    problems: list[str] = field(default_factory=list)  # what a worker cannot read (bullwait.engine.jobcheck)

    def times(self) -> dict[str, str | None]:
        return {
            "created": local_time(self.timestamp),
            "due": local_time(self.due_at) if self.delay else None,
            "processed": local_time(self.processed_on),
            "finished": local_time(self.finished_on),
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["local_times"] = self.times()
        return data


@dataclass
class Check:
    status: str  # ok | warn | fail
    name: str
    detail: str


@dataclass
class DoctorReport:
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        return 2 if "fail" in statuses else 1 if "warn" in statuses else 0

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "checks": [asdict(c) for c in self.checks]}
