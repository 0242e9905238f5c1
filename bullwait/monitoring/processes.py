"""`/health/live` for `bullwait worker --processes N`: every process's worker loops, not only
those of the first process, which serves the HTTP endpoints for all.

The supervisor gives its children a directory (`BULLWAIT_HEALTH_DIR`). Each child writes
`process-<index>.json` (its pid, and since when each failing loop has failed) whenever that
changes; the supervisor writes `supervisor.json` (each slot's pid, and since when the slot has
had no process that stayed up). The serving child reads both on each `/health/live`. Files,
as for Prometheus's multiprocess counters: the children are separate programs, not forks.

Times are `time.monotonic()`: one clock for every process of a host (CLOCK_MONOTONIC on
Linux), which the wall clock is too but may be stepped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

HEALTH_DIR_ENV = "BULLWAIT_HEALTH_DIR"
INDEX_ENV = "BULLWAIT_PROCESS_INDEX"
SUPERVISOR_FILE = "supervisor.json"
REPORT_INTERVAL = 1.0  # seconds between two looks at this process's loops


def process_file(directory: str | Path, index: int) -> Path:
    return Path(directory) / f"process-{index}.json"


def write_json(path: Path, doc: Any) -> None:
    """Replace `path` whole: a reader sees the old document or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or removed with its dead process


class Peers:
    """The other processes of this supervisor, as the serving process reads them."""

    def __init__(self, directory: str | Path, own_index: int) -> None:
        self.directory = Path(directory)
        self.own_index = own_index

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Peers | None:
        """Set up by the supervisor; None for a worker that runs alone."""
        env = dict(os.environ) if env is None else env
        directory, index = env.get(HEALTH_DIR_ENV), env.get(INDEX_ENV)
        if not directory or index is None or not index.isdigit():
            return None
        return cls(directory, int(index))

    def failing(self, after_seconds: float) -> list[str]:
        """One line per other process that has had no working process in its slot, or a worker
        loop failing, for `after_seconds` or more."""
        supervisor = read_json(self.directory / SUPERVISOR_FILE) or {}
        now = time.monotonic()
        found = []
        for slot in supervisor.get("slots", []):
            index = int(slot["index"])
            if index == self.own_index:
                continue
            down_since = slot.get("downSince")
            if down_since is not None and now - float(down_since) >= after_seconds:
                found.append(
                    f"process {index}: exited (code {slot.get('exitCode')}) {now - float(down_since):.0f} s ago "
                    f"and none has stayed up in its place since ({slot.get('restarts', 0)} restarts)"
                )
            report = read_json(process_file(self.directory, index))
            if not report or report.get("pid") != slot.get("pid"):
                continue  # that process has not reported yet; its predecessor's report is gone
            for loop in report.get("failing", []):
                seconds = now - float(loop["since"])
                if seconds >= after_seconds:
                    found.append(
                        f"process {index} (pid {report['pid']}): {loop['queue']}: worker loop failing "
                        f"for {seconds:.0f} s ({loop.get('last') or 'unknown error'})"
                    )
        return found


def loop_state(loops: Any) -> list[dict[str, Any]]:
    """This process's failing loops: since when (whole seconds: a change, not a tick, is news)."""
    now = time.monotonic()
    return [
        {"queue": queue, "since": round(now - seconds), "last": last}
        for queue, seconds, last in loops.failures()
        if seconds > 0
    ]


async def report_loops(loops: Any, directory: str | Path, index: int, interval: float = REPORT_INTERVAL) -> None:
    """Write this process's loop health for the serving process, at once and on every change,
    until cancelled."""
    path = process_file(directory, index)
    written: list[dict[str, Any]] | None = None
    while True:
        state = loop_state(loops)
        if state != written:
            with contextlib.suppress(OSError):  # the supervisor's directory went away: it is stopping
                write_json(path, {"pid": os.getpid(), "index": index, "failing": state})
                written = state
        await asyncio.sleep(interval)
