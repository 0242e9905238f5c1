"""`bullwait worker --processes N` and `bullwait.runtime.supervisor.Supervisor` with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bullwait.runtime.supervisor import Supervisor
from bullwait.settings import Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cli import invoke_cli
from helpers.common import BULLWAIT, ROOT, wait_until
from helpers.monitoring import listening, scrape, value

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
