"""Driving the real Node side (node-compat/) from pytest: one-shot scripts and long-running processes.

Every test module that imports this gets `pytestmark` = marker `node` + a skip when
node-compat/node_modules is absent (run `bash dev.sh setup`, which runs `npm ci`).
Long-running Node processes are started through the `start_node` fixture, which kills them
in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bullwait.dev.embedded import free_port

from helpers.common import ROOT, LoggedProcess
from helpers.jobdata import future_day

NODE_DIR = ROOT / "node-compat"
NODE = shutil.which("node")
HAVE_NODE = bool(NODE) and (NODE_DIR / "node_modules" / "bullmq" / "package.json").is_file()
SKIP_REASON = "node-compat/node_modules is missing: run `bash dev.sh setup` (npm ci in node-compat/)"

node_required = [pytest.mark.node, pytest.mark.skipif(not HAVE_NODE, reason=SKIP_REASON)]

# Debian's Chromium, driven by playwright-core (compat/browser.js); never a downloaded browser.
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
HAVE_BROWSER = os.access(CHROMIUM, os.X_OK) and (NODE_DIR / "node_modules" / "playwright-core").is_dir()
browser_required = [
    *node_required,
    pytest.mark.skipif(not HAVE_BROWSER, reason=f"no {CHROMIUM} (apt-get install chromium) or playwright-core"),
]

BOARD_USER = "ops"
BOARD_PASSWORD = "s3cret-board"


def run_node(
    env: dict[str, str], script: str, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [NODE or "node", script, *args], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"node {script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def node_json(env: dict[str, str], script: str, *args: Any, timeout: float = 60) -> Any:
    """Run a node-compat script whose last stdout line is JSON; JSON-encode non-str args."""
    argv = [a if isinstance(a, str) else json.dumps(a) for a in args]
    out = run_node(env, script, *argv, timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])


def nest(env: dict[str, str], action: str, args: Any = None) -> Any:
    return node_json(env, "nest/produce.js", action, args if args is not None else {})


def legacy(env: dict[str, str], action: str, args: Any = None) -> Any:
    return node_json(env, "legacy/produce4.js", action, args if args is not None else {})


class NodeProcess(LoggedProcess):
    """A long-running Node script with its output in a log file."""

    what = "node"
    log_timeout = 30.0

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        super().__init__([NODE or "node", *args], env, log_path, cwd=NODE_DIR)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[NodeProcess] = []

    def start(*args: str, extra_env: dict[str, str] | None = None, ready: str | None = None) -> NodeProcess:
        proc = NodeProcess(dict(env, **(extra_env or {})), list(args), tmp_path / f"node-{len(started)}.log")
        started.append(proc)
        if ready:
            proc.wait_for_log(ready)
        return proc

    yield start
    for proc in started:
        proc.kill()


class Board:
    def __init__(self, proc: NodeProcess, port: int, auth: tuple[str, str] | None) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}/admin/queues"
        self.client = httpx.Client(base_url=self.base, auth=auth, timeout=10)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.put(path, **kw)


@pytest.fixture
def start_board(start_node: Any) -> Iterator[Any]:
    boards: list[Board] = []

    def start(read_only: bool = False, extra_env: dict[str, str] | None = None) -> Board:
        port = free_port()
        board_env = {
            "BULL_BOARD_PORT": str(port),
            "BULL_BOARD_USER": BOARD_USER,
            "BULL_BOARD_PASSWORD": BOARD_PASSWORD,
            "BULL_BOARD_READ_ONLY": "true" if read_only else "false",
            **(extra_env or {}),
        }
        proc = start_node("board/server.js", extra_env=board_env, ready="bull board listening")
        board = Board(proc, port, (BOARD_USER, BOARD_PASSWORD))
        boards.append(board)
        return board

    yield start
    for board in boards:
        board.client.close()


def seed_entry(waitlist_id: str = "w-1", phone: str = "+34600111222", salon_id: str = "salon-1") -> dict[str, Any]:
    """The NestJS module's `waitlistEntry` argument."""
    return {"id": waitlist_id, "customerId": "cust-1", "salonId": salon_id, "customer": {"phone": phone}}


def seed_slot(slot_id: str = "slot-1") -> dict[str, Any]:
    """The NestJS module's `slot` argument."""
    return {
        "id": slot_id,
        "date": future_day(),
        "startTime": "10:30",
        "masterId": "master-1",
        "master": {"name": "Ana"},
        "serviceId": "service-1",
        "service": {"name": "Haircut"},
        "duration": 45,
        "price": 35.5,
    }


def seed_booking(booking_id: str = "b-1") -> dict[str, Any]:
    return {
        "id": booking_id,
        "salonId": "salon-1",
        "serviceId": "service-1",
        "masterId": "master-1",
        "date": future_day(),
        "startTime": "10:30",
    }


def wait_state(
    sync_redis: Any, env: dict[str, str], key: str, job_id: str, state: str, timeout: float = 30
) -> dict[str, Any]:
    """Poll Node's view of one job until it is in `state`; return the job JSON."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = node_json(env, "compat/inspect.js", "--jobs", f"{key}:{job_id}")[key]["jobs"][job_id]
        if job and job["state"] == state:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} on {key} is {job and job['state']}, expected {state}")


def env_without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


__all__ = ["os"]
