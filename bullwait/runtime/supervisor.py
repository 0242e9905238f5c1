"""Several worker processes under one supervisor (`bullwait worker --processes N`).

One Python process runs one event loop on one core; BullMQ workers scale by adding
processes. The supervisor starts N copies of one child command, restarts a child that
dies (with a growing delay if it keeps dying at once), and on SIGTERM/SIGINT forwards
SIGTERM to every child, waits for them to drain (each child honours its own shutdown
timeout) and exits 0 when all of them exited 0 (or died of that SIGTERM while starting).
Each child gets `BULLWAIT_PROCESS_INDEX` (0..N-1) and a shared `PROMETHEUS_MULTIPROC_DIR`:
every child counts its jobs there and the first child's `/metrics` serves the sum (the
others serve no HTTP). Likewise `BULLWAIT_HEALTH_DIR`: every child reports its worker loops
there and the supervisor each slot's deaths, so the first child's `/health/live` answers for
all (bullwait.monitoring.processes). On Linux a child also gets SIGTERM if the supervisor
itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bullwait.logs import get_logger
from bullwait.monitoring.processes import HEALTH_DIR_ENV, SUPERVISOR_FILE, process_file, write_json

QUICK_DEATH_S = 5.0
MAX_RESTART_DELAY_S = 30.0

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})


def core_contention(processes: int, redis_host: str | None, cpus: int | None) -> str | None:
    """A warning when `processes` workers and a Redis on this host need more cores than there are.

    Redis is single-threaded and every job costs it about as much CPU as the worker's
    (bench: ~45 us each per no-op job). On 2 CPUs with Redis local, two worker processes
    ran 0.6-1.0x the jobs/s of one: three busy processes preempt each other. `redis_host`
    None means a Unix socket (local)."""
    local = redis_host is None or redis_host in LOCAL_HOSTS
    if not local or not cpus or processes + 1 <= cpus:
        return None
    better = max(1, cpus - 1)
    return (
        f"{processes} worker processes and the Redis on this host share {cpus} CPUs, so they preempt each other "
        f"and may run fewer jobs/s than {better} process{'es' if better > 1 else ''}; use --processes {better} "
        "or run Redis on its own host"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_delay: float = 0.5
    restart_at: float = 0.0
    restarts: int = 0
    # Since when (monotonic) the slot has had no process that stayed up QUICK_DEATH_S; None
    # while one does. A crash loop keeps the first death's time.
    down_since: float | None = None
    exit_code: int | None = None


@dataclass
class Supervisor:
    """Run `processes` copies of `argv` until asked to stop; returns the exit code."""

    argv: Sequence[str]
    processes: int
    env: dict[str, str] | None = None
    shutdown_timeout: float = 30.0
    log: Any = field(default_factory=get_logger)
    poll_interval: float = 0.1
    on_spawn: Callable[[int, int], None] | None = None  # (index, pid), for tests and logs
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False
    _stop_signal: str = ""
    _metrics_dir: str | None = None
    _health_dir: str | None = None

    def spawn(self, slot: _Slot) -> None:
        env = dict(self.env if self.env is not None else os.environ)
        env["BULLWAIT_PROCESS_INDEX"] = str(slot.index)
        if self._metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        if self._health_dir:
            env[HEALTH_DIR_ENV] = self._health_dir
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        slot.process = subprocess.Popen(list(self.argv), env=env, preexec_fn=preexec)
        slot.started_at = time.monotonic()
        self.log.info("worker process started", index=slot.index, pid=slot.process.pid, restarts=slot.restarts)
        self._publish()
        if self.on_spawn:
            self.on_spawn(slot.index, slot.process.pid)

    def request_stop(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        # No logging here: a signal handler interrupts whatever the main thread does, maybe
        # a log write holding the log's lock. The loop in run() says it is stopping.
        if not self._stopping:
            self._stop_signal = signal.Signals(signum).name
        self._stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        own_dir = not (self.env or os.environ).get("PROMETHEUS_MULTIPROC_DIR")
        # Children write their Prometheus counters here; the first child serves the sum.
        self._metrics_dir = tempfile.mkdtemp(prefix="bullwait-metrics-") if own_dir else None
        # ... and their loops' health, next to each slot's deaths; the first child answers for all.
        self._health_dir = tempfile.mkdtemp(prefix="bullwait-health-")
        try:
            self._slots = [_Slot(i) for i in range(self.processes)]
            for slot in self._slots:
                self.spawn(slot)
            while not self._stopping:
                self._watch()
                time.sleep(self.poll_interval)
            self.log.info("supervisor stopping", signal=self._stop_signal, processes=self.processes)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            shutil.rmtree(self._health_dir, ignore_errors=True)

    def _watch(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            proc = slot.process
            if proc is None:
                if now >= slot.restart_at and not self._stopping:
                    slot.restarts += 1
                    self.spawn(slot)
                continue
            code = proc.poll()
            if code is None:
                if slot.down_since is not None and now - slot.started_at >= QUICK_DEATH_S:
                    slot.down_since = None  # this one stayed up
                    self._publish()
                continue
            if self._stopping:
                continue
            lived = now - slot.started_at
            slot.restart_delay = min(slot.restart_delay * 2, MAX_RESTART_DELAY_S) if lived < QUICK_DEATH_S else 0.5
            slot.restart_at = now + slot.restart_delay
            slot.process = None
            slot.exit_code = code
            if slot.down_since is None:
                slot.down_since = now
            # What it reported is no longer true of anything running.
            if self._health_dir:
                with contextlib.suppress(OSError):
                    process_file(self._health_dir, slot.index).unlink(missing_ok=True)
            self._publish()
            self.log.warning(
                "worker process exited, restarting",
                index=slot.index,
                pid=proc.pid,
                exit_code=code,
                restart_in=f"{slot.restart_delay:.1f}s",
            )

    def _publish(self) -> None:
        """Each slot's state, for the serving child's /health/live."""
        if not self._health_dir:
            return
        slots = [
            {
                "index": slot.index,
                "pid": slot.process.pid if slot.process else None,
                "downSince": slot.down_since,
                "exitCode": slot.exit_code,
                "restarts": slot.restarts,
            }
            for slot in self._slots
        ]
        with contextlib.suppress(OSError):
            write_json(Path(self._health_dir) / SUPERVISOR_FILE, {"pid": os.getpid(), "slots": slots})

    def _drain(self) -> int:
        deadline = time.monotonic() + self.shutdown_timeout + 10
        codes: dict[int, int] = {}
        for slot in self._slots:
            if slot.process is None:
                continue
            remaining = max(0.1, deadline - time.monotonic())
            try:
                codes[slot.index] = slot.process.wait(remaining)
            except subprocess.TimeoutExpired:
                self.log.warning("worker process did not stop in time, killing", index=slot.index, pid=slot.process.pid)
                slot.process.kill()
                codes[slot.index] = slot.process.wait()
        # A child still starting up when SIGTERM came dies of the signal: also a clean stop.
        failed = {i: c for i, c in codes.items() if c not in (0, -signal.SIGTERM)}
        self.log.info("supervisor stopped", exit_codes=codes)
        return 1 if failed else 0

    @property
    def pids(self) -> list[int | None]:
        return [slot.process.pid if slot.process else None for slot in self._slots]
