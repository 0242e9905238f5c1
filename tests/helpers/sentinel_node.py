"""The Node side (node-compat/) on a real Sentinel topology: environment, a long-lived NestJS
producer, and the Node bullmq 6 timer baseline that bullwait's own Sentinel tests compare with.

    run = node_timer_baseline(topo, env, tmp_path, "graceful")   # or "crash"
    run.ran_twice, run.never_run, run.first_done_after_switch_s

Nothing here asserts a timing: callers get measured numbers and report them.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import redis

from helpers.common import wait_for
from helpers.nodecompat import NODE, NODE_DIR, NodeProcess, node_json
from helpers.sentinel import SentinelSet

EXPIRY_QUEUE = "waitlist-expiry"


def master(topo: SentinelSet) -> redis.Redis:
    """A plain client on the node the sentinels call master now (db 0, as sentinel_env sets)."""
    return redis.Redis(port=topo.master_port(), decode_responses=True, socket_timeout=5)


class NestServer:
    """`node nest/produce.js serve`: one NestJS application context, asked over stdin/stdout."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._stderr = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [NODE or "node", "nest/produce.js", "serve"],
            cwd=NODE_DIR,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._lines: Queue[str] = Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(60)
        if first != "nest producer ready":
            raise AssertionError(f"nest serve did not start: {first!r}\n{log_path.read_text(errors='replace')}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def _next(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"nest serve gave no answer within {timeout}s") from None

    def call(self, action: str, args: Any = None, timeout: float = 60) -> Any:
        """One request; returns its result or raises with the error it answered."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"action": action, "args": args or {}}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self._next(timeout))
        if "error" in answer:
            raise AssertionError(f"nest {action} failed: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


@dataclass
class TimerRun:
    """What a Node worker did with a batch of delayed jobs across one failover."""

    kind: str
    jobs: int
    runs: dict[str, int] = field(default_factory=dict)
    switched_at: float = 0.0  # epoch seconds when the sentinels agreed on the new master
    first_done_after_switch_s: float | None = None
    worker_errors: int = 0
    timeline: str = ""

    @property
    def ran_twice(self) -> int:
        return sum(1 for n in self.runs.values() if n > 1)

    @property
    def never_run(self) -> int:
        return self.jobs - len(self.runs)

    def summary(self) -> str:
        first = "none" if self.first_done_after_switch_s is None else f"{self.first_done_after_switch_s:.2f}s"
        return (
            f"node {self.kind}: {self.jobs} timers, ran twice {self.ran_twice}, never ran {self.never_run}, "
            f"first completion after the switch {first}, worker error lines {self.worker_errors} ({self.timeline})"
        )


def parse_runs(log: str, ids: set[str], switched_at: float) -> tuple[dict[str, int], float | None, int]:
    """Processor starts per job id, seconds from the switch to the first completion, error lines."""
    runs: dict[str, int] = {}
    first_done: float | None = None
    errors = 0
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "run" and parts[1] in ids:
            runs[parts[1]] = runs.get(parts[1], 0) + 1
        elif len(parts) == 3 and parts[0] == "done" and parts[1] in ids:
            at = int(parts[2]) / 1000
            if switched_at and at >= switched_at and first_done is None:
                first_done = at - switched_at
        elif line.startswith("node worker error"):
            errors += 1
    return runs, first_done, errors


def node_timer_baseline(
    topo: SentinelSet,
    env: dict[str, str],
    tmp_path: Path,
    kind: str,
    jobs: int = 500,
    spread_ms: int = 9000,
    switch_after_s: float = 4.0,
    settle_s: float = 40.0,
    after_switch: Callable[[], None] | None = None,
) -> TimerRun:
    """Node bullmq 6 (ioredis sentinels + failoverDetector) runs `jobs` delayed jobs, due over
    `spread_ms` from one second on, while the master fails over (`kind`: graceful | crash).

    The adds are confirmed on the replica (WAIT) before the failover, so a job missing later is
    a timer lost by the failover itself, not an add that never reached the replica. Short
    stalled/lock times let jobs stranded in `active` come back within the settle time.
    `after_switch` runs as soon as the sentinels agree (other Node clients checked meanwhile).
    """
    env = dict(env, BULLMQ_PREFIX=f"{env['BULLMQ_PREFIX']}-{kind}")  # one queue per run
    ids = [f"t-{kind}-{i}" for i in range(jobs)]
    worker = NodeProcess(
        env,
        [
            "compat/worker.js",
            "WAITLIST_EXPIRY",
            "--print-runs",
            "--concurrency",
            "20",
            "--stalled-interval",
            "2500",
            "--lock-duration",
            "5000",
            "--name",
            f"node-{kind}",
        ],
        tmp_path / f"node-timers-{kind}.log",
    )
    try:
        worker.wait_for_log("node worker ready")
        return _timers_across_failover(topo, env, worker, kind, ids, spread_ms, switch_after_s, settle_s, after_switch)
    finally:
        worker.stop()


def _timers_across_failover(
    topo: SentinelSet,
    env: dict[str, str],
    worker: NodeProcess,
    kind: str,
    ids: list[str],
    spread_ms: int,
    switch_after_s: float,
    settle_s: float,
    after_switch: Callable[[], None] | None,
) -> TimerRun:
    jobs = len(ids)
    # After an earlier failover the old master rejoins as a replica only after some seconds;
    # start once the master has an online replica again, or WAIT below would stall the run.
    wait_for(
        lambda: master(topo).info("replication").get("slave0", {}).get("state") == "online",
        "the master to have an online replica",
    )
    specs = [
        {"name": "check-expiry", "data": {"i": i}, "opts": {"jobId": job_id, "delay": 1000 + i * spread_ms // jobs}}
        for i, job_id in enumerate(ids)
    ]
    added_at = time.time()
    added = node_json(env, "compat/add.js", "WAITLIST_EXPIRY", specs, timeout=120)
    add_s = time.time() - added_at
    assert all("id" in a for a in added), [a for a in added if "id" not in a][:3]
    replicated = master(topo).execute_command("WAIT", 1, 5000)
    assert replicated >= 1, "the replica did not confirm the adds"
    time.sleep(max(0.0, added_at + switch_after_s - time.time()))
    failing_at = time.time()
    (topo.failover if kind == "graceful" else topo.crash_master)()
    run = TimerRun(kind, jobs, switched_at=time.time())
    run.timeline = (
        f"adds took {add_s:.1f}s; failover started {failing_at - added_at:.1f}s after the first add, "
        f"sentinels agreed {run.switched_at - failing_at:.1f}s later"
    )
    if after_switch:
        after_switch()
    completed_key = f"{env['BULLMQ_PREFIX']}:{EXPIRY_QUEUE}:completed"
    wanted = set(ids)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        run.runs, run.first_done_after_switch_s, run.worker_errors = parse_runs(worker.log(), wanted, run.switched_at)
        try:
            done = master(topo).zcard(completed_key)
        except redis.RedisError:
            done = -1
        if run.never_run == 0 and done >= jobs:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # late duplicates of jobs already counted
    run.runs, run.first_done_after_switch_s, run.worker_errors = parse_runs(worker.log(), wanted, run.switched_at)
    return run
