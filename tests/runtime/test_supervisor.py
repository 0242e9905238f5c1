"""`bullwait worker --processes N` and `bullwait.runtime.supervisor.Supervisor` with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bullwait.dev.embedded import free_port
from bullwait.runtime.supervisor import Supervisor
from bullwait.settings import Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cli import invoke_cli
from helpers.common import BULLWAIT, ROOT, LoggedProcess, wait_until
from helpers.monitoring import get, listening, scrape, value

CHILD = [
    sys.executable,
    "-c",
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(3600)",
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_supervisor_starts_n_restarts_a_killed_child_and_stops_all() -> None:
    spawned: list[tuple[int, int]] = []
    sup = Supervisor(CHILD, 3, shutdown_timeout=5, on_spawn=lambda i, pid: spawned.append((i, pid)))

    def driver() -> None:
        wait_until(lambda: len(spawned) == 3, message="3 children")
        victim = spawned[1][1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(spawned) == 4, timeout=10, message="killed child restarted")
        assert spawned[3][0] == 1, "the restarted child takes the dead one's slot"
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=driver)
    helper.start()
    code = sup.run()  # in the main thread: it installs the SIGTERM handler
    helper.join()
    assert code == 0
    assert len({pid for _, pid in spawned}) == 4
    assert not any(_alive(pid) for _, pid in spawned)


def test_worker_processes_serve_jobs_and_drain_on_sigterm(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "sup.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*BULLWAIT, "worker", "--processes", "2", "-q", "waitlist-expiry"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_until(lambda: log_path.read_text().count("worker started") == 2, timeout=30, message="2 worker processes")

        async def add() -> list[str]:
            async with Producer(settings) as producer:
                return await producer.schedule_expiries(
                    [new_expiry(f"w-{i}", "s", "c", "salon", delay_ms=0) for i in range(40)]
                )

        import asyncio

        ids = asyncio.run(add())
        assert len(ids) == 40
        wait_until(lambda: log_path.read_text().count("job completed") == 40, timeout=30, message="40 jobs completed")
        text = log_path.read_text()
        pids = {
            line.split('"pid": ')[1].split(",")[0] for line in text.splitlines() if "worker process started" in line
        }
        assert len(pids) == 2
        # One /metrics for both processes: counters summed across them.
        assert text.count("monitoring server listening") == 1
        port = int(listening(text)["port"])
        samples = scrape(port)
        assert value(samples, "bullmq_jobs_total", queue="waitlist-expiry", status="completed") == 40
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert text.count("stopped") >= 2 and "supervisor stopped" in text
    for job_id in ids:
        assert text.count(f'"jobId": "{job_id}"') >= 1


@pytest.mark.parametrize("bad", ["0", "x"])
def test_processes_bad_value_is_one_line(env: dict[str, str], bad: str) -> None:
    out = invoke_cli(env, "worker", "--processes", bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "--processes" in out.stderr


@pytest.mark.parametrize(
    "processes, host, cpus, warned",
    [
        (2, "127.0.0.1", 2, True),  # 2 workers + Redis on 2 CPUs: measured slower than 1 process
        (2, None, 2, True),  # Unix socket: Redis is local
        (1, "localhost", 2, False),
        (3, "localhost", 4, False),
        (4, "localhost", 4, True),
        (8, "redis.internal", 2, False),  # Redis on its own host: no contention here
        (2, "127.0.0.1", None, False),  # CPU count unknown: say nothing
    ],
)
def test_core_contention_warns_only_when_workers_and_local_redis_outnumber_cpus(
    processes: int, host: str | None, cpus: int | None, warned: bool
) -> None:
    from bullwait.runtime.supervisor import core_contention

    message = core_contention(processes, host, cpus)
    assert (message is not None) == warned
    if message:
        assert f"--processes {max(1, cpus - 1)}" in message and "Redis" in message  # type: ignore[operator]


def test_redis_hostname_reads_url_host_or_socket() -> None:
    from bullwait.engine.connection import redis_hostname

    assert redis_hostname(Settings(redis_url="redis://:pw@cache.internal:6380/0")) == "cache.internal"
    assert redis_hostname(Settings(redis_url="unix:///run/redis.sock")) is None
    assert redis_hostname(Settings(redis_host="10.0.0.5")) == "10.0.0.5"


# --- /health/live answers for every process, not only the serving one ----------------------

# Child 1 is the odd one out: it reaches Redis as a user that may not run scripts (every fetch
# refused, as in tests/monitoring/test_live_failing.py), or exits at once while the flag file
# exists. Child 0, which serves /health/live, works throughout.
ODD_CHILD = """
if [ "$BULLWAIT_PROCESS_INDEX" = 1 ]; then
  [ ! -e "$CRASH_FLAG" ] || exit 3
  export REDIS_URL="$ODD_REDIS_URL"
fi
exec "$0" -m bullwait.cli.main worker -q expiry
"""
SUPERVISE = (
    "import sys; from bullwait.logs import configure_logging; from bullwait.runtime.supervisor import Supervisor; "
    "configure_logging('info'); sys.exit(Supervisor(sys.argv[1:], 2, shutdown_timeout=5).run())"
)


def _live(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/health/live")
    return status, json.loads(body)


def _live_when(port: int, status: int, message: str) -> dict[str, Any]:
    return wait_until(lambda: (lambda r: r[1] if r[0] == status else None)(_live(port)), timeout=60, message=message)


def _child_pid(log_text: str, index: int) -> int:
    started = [json.loads(line) for line in log_text.splitlines() if "worker process started" in line]
    return int([record for record in started if record["index"] == index][-1]["pid"])


def test_live_answers_for_every_worker_process(
    env: dict[str, str], redis_server: Any, sync_redis: Any, tmp_path: Path
) -> None:
    user, password = f"nofetch-{uuid.uuid4().hex[:6]}", "pw-" + uuid.uuid4().hex[:8]
    sync_redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-evalsha", "-eval")
    port, flag = free_port(), tmp_path / "crash"
    sup_env = dict(
        env,
        METRICS_PORT=str(port),
        HEALTH_LIVE_FAILING_SECONDS="2",
        ODD_REDIS_URL=f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0",
        CRASH_FLAG=str(flag),
    )
    argv = [sys.executable, "-c", SUPERVISE, "sh", "-c", ODD_CHILD, sys.executable]
    sup = LoggedProcess(argv, sup_env, tmp_path / "supervisor.log")
    try:
        sup.wait_for_log("worker started", count=2, timeout=60)
        # Only process 1's loop fails: the serving process 0 is fine, and says process 1 is not.
        doc = _live_when(port, 503, "503 for process 1's failing loop")
        print("\nlive, process 1 refused its scripts:", doc)
        assert doc["status"] == "worker-failing" and doc["problem"].startswith("process 1 (pid ")
        assert "NOPERM" in doc["problem"] or "permission" in doc["problem"].lower()
        assert "process 0" not in doc["problem"]
        sync_redis.execute_command("ACL", "SETUSER", user, "+evalsha", "+eval")
        _live_when(port, 200, "200 once process 1's fetches work")

        # Process 1 dies and every process started in its place exits at once.
        flag.touch()
        os.kill(_child_pid(sup.log(), 1), signal.SIGKILL)
        doc = _live_when(port, 503, "503 while process 1 keeps exiting")
        print("live, process 1 in a crash loop:", doc)
        assert doc["problem"].startswith("process 1: exited (code 3)"), doc
        flag.unlink()
        _live_when(port, 200, "200 once a process 1 stays up")
        assert sup.log().count("worker process exited, restarting") >= 2
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(30) == 0, sup.log()[-3000:]
    finally:
        sup.kill()
        sync_redis.execute_command("ACL", "DELUSER", user)
