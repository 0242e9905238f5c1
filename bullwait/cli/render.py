"""How the commands print: tables sized to the terminal (or wide when piped), jobs, doctor lines.

The library returns plain data (bullwait.ops.results, bullwait.ops.snapshot); everything
about how it looks on a terminal is here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bullwait.ops.durations import format_ms, local_time
from bullwait.ops.migrate import MOVABLE_STATES, QueueMigration
from bullwait.ops.results import Check, DoctorReport, JobInfo
from bullwait.ops.snapshot import QueueSnapshot
from bullwait.waitlist.producer import CancelResult


def stdout_console() -> Console:
    """stdout as wide as COLUMNS says; else the terminal's width, or 220 when piped (rich
    would squeeze a piped table to 80 columns). Made per command, when COLUMNS is known."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return Console(width=int(columns))
    return Console() if sys.stdout.isatty() else Console(width=220)


def table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """Columns from the first row's keys; numbers right-aligned; the first column never wraps."""
    out = Table(title=title, box=box.SIMPLE_HEAD)
    for i, column in enumerate(rows[0]):
        numeric = isinstance(rows[0][column], (int, float))
        out.add_column(str(column), justify="right" if numeric else "left", no_wrap=i == 0)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row.values()))
    return out


def print_table(rows: list[dict[str, Any]], title: str | None = None, console: Console | None = None) -> None:
    (console or stdout_console()).print(table(rows, title) if rows else "(nothing)")


# --- stats ---------------------------------------------------------------------------


def stats_row(s: QueueSnapshot) -> dict[str, Any]:
    workers = "?" if s.workers is None else f"{s.workers} ({s.workers_node}/{s.workers_python})"
    return {
        "queue": s.name,
        "waiting": s.waiting,
        "prioritized": s.prioritized,
        "delayed": s.delayed,
        "active": s.active,
        "completed": s.completed,
        "failed": s.failed,
        "paused": "yes" if s.paused else "no",
        "workers (node/py)": workers,
        "oldest waiting": format_ms(s.oldest_waiting_ms),
    }


def stats_table(rows: list[QueueSnapshot], console: Console, caption: str | None = None) -> Table:
    """One row per queue when it fits the width; else one column per queue, so no header
    is cut to `w…` (ten columns with a 31-character queue name need ~145). `caption`: the
    Sentinel topology, under the table."""
    wide = table([stats_row(r) for r in rows], "bullwait stats")
    wide.caption = caption
    # Measured unbounded: rich clamps a measurement to the console's width.
    if not rows or console.measure(wide, options=console.options.update_width(100_000)).maximum <= console.width:
        return wide
    tall = Table(title="bullwait stats", box=box.SIMPLE_HEAD, caption=caption)
    tall.add_column("", no_wrap=True)
    for r in rows:
        # Break after the first '-' (`waitlist-` / `notification`): three names fit 80 columns.
        tall.add_column(r.name.replace("-", "-\n", 1), justify="right", no_wrap=True)
    by_queue = [stats_row(r) for r in rows]
    for label in list(by_queue[0])[1:]:
        tall.add_row(label, *(str(row[label]) for row in by_queue))
    return tall


# --- cancel --------------------------------------------------------------------------


def cancel_message(result: CancelResult, waitlist_id: str | None = None) -> str:
    """What `cancel` says: of a job, or with `waitlist_id` of that waitlist's expiry timer."""
    job = f"job {result.job_id} on {result.queue}"
    if waitlist_id is None:
        if result.cancelled:
            return f"cancelled {job}"
        if result.outcome == "missing":
            return f"no {job}"
        return f"{job} is {result.outcome}; only waiting or delayed jobs can be cancelled"
    if result.cancelled:
        return f"cancelled the expiry timer of waitlist {waitlist_id} ({job})"
    if result.outcome == "missing":
        return f"no expiry timer for waitlist {waitlist_id} (no {job})"
    return (
        f"not cancelled: the expiry timer of waitlist {waitlist_id} is {result.outcome} "
        f"({job}); only waiting or delayed timers can be cancelled"
    )


# --- migrate-legacy ------------------------------------------------------------------


def migration_row(q: QueueMigration, dry_run: bool) -> dict[str, Any]:
    """One legacy queue: jobs found per state (a dry run) or moved of found."""
    row: dict[str, Any] = {"from": q.source, "to": q.target}
    for state in MOVABLE_STATES:
        n = q.found.get(state, 0)
        row[state] = n if dry_run else f"{q.moved.get(state, 0)}/{n}"
    row["conflicts"] = len(q.conflicts)
    row["active"] = len(q.active)
    row["completed (kept)"] = q.completed_left
    return row


# --- jobs ----------------------------------------------------------------------------


def job_row(job: JobInfo) -> dict[str, Any]:
    attempts = f"{job.attempts_made}/{job.max_attempts}" if job.max_attempts else str(job.attempts_made)
    reason = (job.failed_reason or "").splitlines()[0][:60] if job.failed_reason else ""
    when = job.finished_on or job.processed_on or (job.due_at if job.delay else job.timestamp)
    return {
        "id": job.id,
        "name": job.name or "",
        "state": job.state,
        "attempts": attempts,
        "priority": job.priority or "",
        "created": local_time(job.timestamp) or "",
        "due/processed/finished": local_time(when) or "",
        "failedReason": reason,
    }


def print_job(job: JobInfo) -> None:
    out = Console(highlight=False, soft_wrap=True)
    attempts = f"{job.attempts_made}" + (f" of {job.max_attempts}" if job.max_attempts else "")
    lines = [
        ("queue", job.queue),
        ("id", job.id),
        ("name", job.name),
        ("state", job.state + (" (locked by a worker)" if job.locked else "")),
        ("attempts", f"{attempts} made, {job.attempts_started} started, stalled {job.stalled_counter}x"),
        ("priority", job.priority or "none"),
        ("created", local_time(job.timestamp)),
        ("due", local_time(job.due_at) if job.delay else None),
        ("processed", local_time(job.processed_on)),
        ("finished", local_time(job.finished_on)),
        ("processed by", job.processed_by),
        ("failedReason", job.failed_reason),
        ("unreadable", "; ".join(job.problems)),  # why a worker fails it at once (bullwait.engine.jobcheck)
    ]
    for label, value in lines:
        if value not in (None, ""):
            out.print(f"{label + ':':<14}{value}", markup=False)
    out.print("data:" + ("" if job.data_is_json else " (not valid JSON; shown raw)"), markup=False)
    out.print(
        _indent(job.data if not job.data_is_json else json.dumps(job.data, indent=2, ensure_ascii=False)), markup=False
    )
    out.print("options:", markup=False)
    out.print(_indent(json.dumps(job.opts, indent=2, ensure_ascii=False)), markup=False)
    if job.returnvalue is not None:
        out.print("returnvalue:", markup=False)
        out.print(_indent(json.dumps(job.returnvalue, indent=2, ensure_ascii=False)), markup=False)
    if job.stacktrace:
        out.print(f"stacktrace ({len(job.stacktrace)}):", markup=False)
        for trace in job.stacktrace:
            out.print(_indent(trace), markup=False)
    out.print(f"logs ({job.logs_count}):" + ("" if job.logs else " none"), markup=False)
    for entry in job.logs:
        out.print(_indent(entry), markup=False)


def _indent(text: Any) -> str:
    return "\n".join("  " + line for line in str(text).splitlines()) or "  "


# --- doctor --------------------------------------------------------------------------


def check_line(check: Check, width: int = 28) -> str:
    return f"{check.status:<4}  {check.name:<{width}}  {check.detail}"


def doctor_lines(report: DoctorReport) -> list[str]:
    width = max((len(c.name) for c in report.checks), default=10)
    return [check_line(c, width) for c in report.checks]
