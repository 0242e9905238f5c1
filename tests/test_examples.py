"""The examples in examples/ run as they are, against the suite's private Redis."""

from __future__ import annotations

import re
import subprocess
import sys

import redis

from helpers.common import ROOT


def _run(example: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{example} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_own_queue_example_processes_its_jobs_and_closes(
    env: dict[str, str], sync_redis: redis.Redis, prefix: str
) -> None:
    result = _run("own_queue.py", env)
    lines = result.stdout.splitlines()
    sent = sorted(re.findall(r"^completed welcome \d+: \{'sent': '([^']+)'\}$", result.stdout, re.M))
    assert sent == ["ana@example.com", "luis@example.com", "marta@example.com"], result.stdout
    assert lines[-1] == "worker closed after 3 jobs"
    assert sync_redis.zcard(f"{prefix}:emails:completed") == 3
    assert sync_redis.llen(f"{prefix}:emails:active") == 0


def test_waitlist_workers_example_runs_an_offer_through_the_workers(env: dict[str, str]) -> None:
    result = _run("waitlist_workers.py", env)
    out = result.stdout
    assert re.search(r"^offered slot-\w+ to w-\w+$", out, re.M), out
    assert re.search(r"^notification notify_w-[\w-]+: completed$", out, re.M), out
    assert "booking: booked" in out
    assert "preferences of customer-1: service-cut with master-1 at 10h" in out
    assert out.splitlines()[-1] == "workers stopped, exit code 0"
    log = result.stderr
    assert "whatsapp message (console sender, not sent)" in log  # the built-in notification processor ran
    assert '"event": "preferences stored"' in log  # the example's own processor, through dispatch
    assert "+34600111222" not in log, "configure_logging masks phone numbers"
    assert '"graceful": true' in log
