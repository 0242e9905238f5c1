"""A log nobody reads never fails a job or holds up a stop (item 7).

`bullwait worker 2>&1 | head`, a log collector that died, or one that stopped reading:
every job used to fail "[Errno 32] Broken pipe" (or the worker froze on a full pipe), and
SIGTERM was then ignored. Here the real worker and demo write into a pipe whose reader
goes away or stops reading; jobs must complete (checked in Redis) and SIGTERM must stop
the worker (measured seconds printed, not asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import time
from typing import Any

import pytest

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.common import BULLWAIT, ROOT
from helpers.reliability import add_counted, counts, eventually

STOP_DEADLINE = 30.0


def _spawn(env: dict[str, str], *args: str, pipe_size: int | None = None) -> subprocess.Popen[bytes]:
    """A bullwait command with stdout and stderr on one pipe (as `2>&1 | reader`)."""
    read_fd, write_fd = os.pipe()
    if pipe_size:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, pipe_size)  # a small pipe (two pages) fills with a few dozen lines
    try:
        proc = subprocess.Popen([*BULLWAIT, *args], env=env, stdout=write_fd, stderr=write_fd, cwd=ROOT)
    finally:
        os.close(write_fd)
    proc.stdout = os.fdopen(read_fd, "rb", buffering=0)
    return proc


def _read_until(proc: subprocess.Popen[bytes], text: bytes, count: int = 1, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while seen.count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} x{count} within {timeout}s:\n{seen.decode(errors='replace')}"
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            assert chunk, f"output ended (exit {proc.poll()}):\n{seen.decode(errors='replace')}"
            seen += chunk
    return seen


def _drain(proc: subprocess.Popen[bytes]) -> bytes:
    out = b""
    while select.select([proc.stdout], [], [], 0)[0]:
        chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
        if not chunk:
            break
        out += chunk
    return out


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM; the exit code and the seconds it took (None: still running at the deadline)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    return code, time.monotonic() - started


async def _add_and_finish(settings: Settings, numbers: list[int]) -> str:
    """Add jobs and wait until each completed on its first attempt; '' or what went wrong."""
    async with Producer(settings) as producer:
        added = [await add_counted(producer, i, sleep_ms=1) for i in numbers]

        async def all_completed() -> bool:
            return all([await producer.queue(k).getJobState(j) == "completed" for k, j in added])

        with contextlib.suppress(AssertionError):
            await eventually(all_completed, timeout=30, message=f"{len(added)} jobs completed")
        jobs = [await producer.queue(k).getJob(j) for k, j in added]
        wrong = {j.id: (j.attemptsMade, j.failedReason) for j in jobs if j and (j.attemptsMade != 1 or j.failedReason)}
        if wrong or not all(jobs) or not await all_completed():
            states = {k.value: await counts(producer, k) for k in QueueKey}
            return f"not every job completed at its first attempt: counts {states}; (attempts, reason) {wrong}"
        return ""


@pytest.mark.parametrize("processes", [1, 2])
def test_worker_whose_log_reader_is_gone(env: dict[str, str], settings: Settings, processes: int) -> None:
    proc = _spawn(env, "worker", "--processes", str(processes))
    try:
        _read_until(proc, b"worker started", count=3 * processes)
        proc.stdout.close()  # type: ignore[union-attr]  # the reader dies: every later write meets EPIPE
        problem = asyncio.run(_add_and_finish(settings, list(range(9))))  # notifications log inside the processor too
        alive = proc.poll() is None
        code, seconds = _stop(proc)
        print(f"\nreader gone, {processes} process(es): SIGTERM -> exit {code} in {seconds:.2f}s")
        assert not problem and alive, problem or f"the worker exited {proc.returncode}"
        assert code == 0, f"the worker did not stop on SIGTERM within {STOP_DEADLINE}s (exit {code})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_whose_log_reader_stopped_reading(env: dict[str, str], settings: Settings) -> None:
    proc = _spawn(env, "worker", pipe_size=8192)
    try:
        _read_until(proc, b"worker started", count=3)
        # Nobody reads from here on: the pipe fills after a few dozen lines.
        problem = asyncio.run(_add_and_finish(settings, [i for i in range(90) if i % 3]))  # timers and preferences
        alive = proc.poll() is None
        _drain(proc)  # the reader is back: the next line says how many were dropped
        code, seconds = _stop(proc)
        rest = _drain(proc) + (proc.stdout.read() if code is not None else b"")  # type: ignore[union-attr]
        print(f"\nreader stalled: SIGTERM -> exit {code} in {seconds:.2f}s")
        assert not problem and alive, problem or f"the worker exited {proc.returncode}"
        assert code == 0, f"the worker did not stop on SIGTERM within {STOP_DEADLINE}s (exit {code})"
        events = [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
        dropped = [e for e in events if e.get("event") == "log lines dropped"]
        assert dropped and dropped[0]["dropped"] > 0, rest.decode()[-2000:]
        assert events[-1]["event"] == "stopped", rest.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_into_head(env: dict[str, str], settings: Settings) -> None:
    """`bullwait demo 2>&1 | head -2`: the demo still runs every job and exits 0."""
    proc = _spawn(env, "demo", "--embedded-redis", "never", "--timeout", "20")
    try:
        _read_until(proc, b"\n", count=2)
        proc.stdout.close()  # type: ignore[union-attr]
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def totals() -> dict[str, dict[str, int]]:
        async with Producer(settings) as producer:
            return {k.value: await counts(producer, k) for k in QueueKey}

    found: Any = asyncio.run(totals())
    assert all(c["failed"] == 0 for c in found.values()) and all(c["completed"] > 0 for c in found.values()), found
    assert code == 0, found
