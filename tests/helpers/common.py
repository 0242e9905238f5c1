"""What many tests use: the repository root, the CLI as a subprocess, a real `bullwait worker`
process, and polling until something holds."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# wait_for: polls until a Redis topology settles, Redis and OS errors meaning "not yet"; it lives
# beside the local cluster starter, which needs it and may not import the tests.
from bullwait.dev.cluster import wait_for as wait_for

ROOT = Path(__file__).resolve().parents[2]
BULLWAIT = [sys.executable, "-m", "bullwait.cli.main"]


class LoggedProcess:
    """A real subprocess whose stdout and stderr go to one log file; `what` names it in failures."""

    what = "process"
    log_timeout = 20.0

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT, **popen: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, **popen)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float | None = None) -> str:
        timeout = self.log_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return self.log()
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.what} exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} x{count} in {self.what} log within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class WorkerProcess(LoggedProcess):
    """`bullwait worker` as a real subprocess, its log captured to a file."""

    what = "worker"

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path, **popen: Any) -> None:
        super().__init__([*BULLWAIT, "worker", *args], env, log_path, **popen)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BULLWAIT, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def wait_until(predicate, timeout: float = 20, interval: float = 0.05, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


async def wait_job_state(queue, job_id: str, state: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll a bullmq Queue until job `job_id` is in `state` (or fail saying where it is)."""
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        current = await queue.getJobState(job_id)
        if current == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue.name} job {job_id} is {current}, expected {state}")


def job_events(client: Any, prefix: str, queue: str, job_id: str) -> list[dict[str, str]]:
    """A job's entries in its queue's BullMQ event stream, oldest first: what it went through,
    whatever the timing (`delayed`, `waiting`, `active` is a wait in delayed before a run;
    a `delayed` entry's `delay` is the time it was put back until). `client`: a sync
    redis.Redis with decode_responses."""
    stream = client.xrange(f"{prefix}:{queue}:events")
    return [fields for _, fields in stream if fields.get("jobId") == job_id]
