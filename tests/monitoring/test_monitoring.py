"""Metrics and health, scraped over HTTP on loopback from a live `bullwait worker` and `bullwait serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bullmq import Queue
from prometheus_client.parser import text_string_to_metric_families

from bullwait.dev.embedded import free_port
from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.engine.connection import redis_options
from bullwait.monitoring.metrics import JobMetrics
from bullwait.ops.snapshot import NODE_STATES
from bullwait.runtime.runner import WorkerPool, worker_options
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.common import BULLWAIT, LoggedProcess, WorkerProcess, run_cli, wait_until
from helpers.jobdata import expiry_data, notification_data, preference_data
from helpers.monitoring import get, health, listening, scrape, value
from helpers.nodecompat import HAVE_NODE, SKIP_REASON, node_required
from helpers.nodecompat import NODE_DIR as NODE_COMPAT

EXPIRY, NOTIFY, PREFS = "waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"


# --- helpers ---------------------------------------------------------------------------


class ServeProcess(LoggedProcess):
    what = "serve"

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        super().__init__([*BULLWAIT, "serve", *args], env, log_path)

    def port(self) -> int:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
            return "monitoring server listening" in self.log()

        wait_until(ready, message="bullwait serve to listen")
        return int(listening(self.log())["port"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        finally:
            self._log.close()


@pytest.fixture
def start_serve(env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[ServeProcess] = []

    def start(*args: str, extra_env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(dict(env, **(extra_env or {})), list(args), tmp_path / f"serve-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def job_counts(settings: Settings, name: str) -> dict[str, int]:
    queue = Queue(name, {"connection": redis_options(settings), "prefix": settings.bullmq_prefix})
    try:
        return await queue.getJobCounts(*NODE_STATES)
    finally:
        await queue.close()


def assert_gauges_match(samples: dict, name: str, counts: dict[str, int]) -> None:
    """The scraped gauges equal what bullmq's own getJobCounts reads from Redis."""
    for state in NODE_STATES:
        assert value(samples, "bullmq_job_count", queue=name, state=state) == counts[state], state
    assert value(samples, "bullmq_jobs_waiting", queue=name) == counts["waiting"]
    assert value(samples, "bullmq_jobs_active", queue=name) == counts["active"]
    assert value(samples, "bullmq_jobs_delayed", queue=name) == counts["delayed"]
    assert value(samples, "bullmq_jobs_prioritized", queue=name) == counts["prioritized"]
    assert value(samples, "bullmq_jobs_failed", queue=name) == counts["failed"]
    assert value(samples, "bullmq_jobs_completed", queue=name) == counts["completed"]


NODE_PRODUCER = r"""
const { Queue } = require('bullmq');
const [port, prefix, data] = [Number(process.argv[1]), process.argv[2], JSON.parse(process.argv[3])];
(async () => {
  const connection = { host: '127.0.0.1', port, db: 0 };
  const open = (name) => new Queue(name, { connection, prefix });
  const [expiry, notify, prefs] = [
    open('waitlist-expiry'), open('waitlist-notification'), open('waitlist-preference-calculation'),
  ];
  for (let i = 0; i < 3; i++) await notify.add('send-slot-available', data.notification, { attempts: 3 });
  for (let i = 0; i < 2; i++) await prefs.add('calculate-preferences', data.preference, { priority: 10 });
  for (let i = 0; i < 4; i++) await expiry.add('check-expiry', data.expiry, { delay: 3600000, jobId: `expiry_n${i}` });
  await expiry.add('check-expiry', data.expiry, { delay: 1, jobId: 'expiry_due' });
  await Promise.all([expiry.close(), notify.close(), prefs.close()]);
})().catch((err) => { console.error(err); process.exit(1); });
"""


async def produce(kind: str, settings: Settings, port: int, prefix: str) -> None:
    """3 waiting notifications, 2 prioritized preference jobs, 4 far timers and 1 due timer."""
    if kind == "node":
        data = {"notification": notification_data(), "preference": preference_data(), "expiry": expiry_data()}
        subprocess.run(
            ["node", "-e", NODE_PRODUCER, str(port), prefix, json.dumps(data)], cwd=NODE_COMPAT, check=True, timeout=60
        )
        return
    async with Producer(settings) as producer:
        for _ in range(3):
            await producer.queue(QueueKey.WAITLIST_NOTIFICATION).add(
                "send-slot-available", notification_data(), {"attempts": 3}
            )
        for _ in range(2):
            await producer.queue(QueueKey.PREFERENCE_CALCULATION).add(
                "calculate-preferences", preference_data(), {"priority": 10}
            )
        for i in range(4):
            await producer.queue(QueueKey.WAITLIST_EXPIRY).add(
                "check-expiry", expiry_data(), {"delay": 3_600_000, "jobId": f"expiry_n{i}"}
            )
        await producer.queue(QueueKey.WAITLIST_EXPIRY).add(
            "check-expiry", expiry_data(), {"delay": 1, "jobId": "expiry_due"}
        )


# --- bullwait serve (no workers) ---------------------------------------------------------


@pytest.mark.parametrize(
    "producer",
    [
        pytest.param("node", marks=node_required),
        "python",
    ],
)
async def test_serve_gauges_equal_redis_counts(
    producer: str, settings: Settings, start_serve, redis_server, prefix
) -> None:  # type: ignore[no-untyped-def]
    serve = start_serve()
    port = serve.port()
    await produce(producer, settings, redis_server.port, prefix)
    await asyncio.sleep(0.2)  # the `expiry_due` timer is now >= 0.19 s overdue: no worker promotes it
    samples = scrape(port)
    for name in (EXPIRY, NOTIFY, PREFS):
        assert_gauges_match(samples, name, await job_counts(settings, name))
    assert value(samples, "bullmq_jobs_waiting", queue=NOTIFY) == 3
    assert value(samples, "bullmq_jobs_prioritized", queue=PREFS) == 2
    assert value(samples, "bullmq_jobs_delayed", queue=EXPIRY) == 5
    assert value(samples, "bullmq_delayed_overdue_seconds", queue=EXPIRY) >= 0.19
    assert value(samples, "bullmq_delayed_overdue_seconds", queue=NOTIFY) == 0
    assert value(samples, "bullmq_redis_up") == 1
    assert value(samples, "bullmq_queue_workers", queue=EXPIRY) == 0
    # Jobs and no worker anywhere: unhealthy, and it says why, per queue.
    status, doc = health(port)
    assert status == 503 and doc["healthy"] is False
    assert {q["name"]: q["workers"] for q in doc["queues"]} == {EXPIRY: 0, NOTIFY: 0, PREFS: 0}
    assert {q["name"]: q["waiting"] for q in doc["queues"]}[NOTIFY] == 3
    assert sum("no worker" in p for p in doc["problems"]) == 3
    assert get(port, "/health/live")[0] == 200
    assert serve.stop() == 0


NODE_WORKER = r"""
const { Worker } = require('bullmq');
const [port, prefix, name] = [Number(process.argv[1]), process.argv[2], process.argv[3]];
(async () => {
  const worker = new Worker(name, async () => 'ok', {
    connection: { host: '127.0.0.1', port, db: 0 }, prefix, name: 'node-w1',
  });
  await worker.waitUntilReady();
  console.log('ready');
  process.stdin.on('end', async () => { await worker.close(); process.exit(0); });
  process.stdin.resume();
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.mark.node
@pytest.mark.skipif(not HAVE_NODE, reason=SKIP_REASON)
async def test_serve_counts_a_node_worker(settings: Settings, start_serve, redis_server, prefix) -> None:  # type: ignore[no-untyped-def]
    serve = start_serve("-q", EXPIRY)
    port = serve.port()
    async with Producer(settings) as producer:
        await producer.queue(QueueKey.WAITLIST_EXPIRY).add(
            "check-expiry", expiry_data(), {"delay": 3_600_000, "jobId": "expiry_1"}
        )
    status, doc = health(port)
    assert status == 503 and doc["queues"][0]["workers"] == 0  # a 15-minute timer and nobody to run it
    node = subprocess.Popen(
        ["node", "-e", NODE_WORKER, str(redis_server.port), prefix, EXPIRY],
        cwd=NODE_COMPAT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None and node.stdout.readline().strip() == "ready"
        wait_until(lambda: health(port)[0] == 200, message="the Node worker to be counted")
        status, doc = health(port)
        assert doc["queues"][0]["workers"] == 1, doc  # found by its Node name, <prefix>:<base64(queue)>:w:node-w1
        assert value(scrape(port), "bullmq_queue_workers", queue=EXPIRY) == 1
    finally:
        node.communicate(timeout=30)
    wait_until(lambda: health(port)[0] == 503, message="the Node worker to be gone")


async def test_paused_queue_counts(settings: Settings, start_serve) -> None:  # type: ignore[no-untyped-def]
    """Pausing keeps the jobs in the wait list (BullMQ 5+): `waiting` as Node's getJobCounts, paused flag set."""
    serve = start_serve("-q", NOTIFY)
    port = serve.port()
    async with Producer(settings) as producer:
        queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
        for _ in range(2):
            await queue.add("send-slot-available", notification_data(), {})
        await queue.pause()
        samples = scrape(port)
        assert value(samples, "bullmq_jobs_waiting", queue=NOTIFY) == 2
        assert value(samples, "bullmq_queue_paused", queue=NOTIFY) == 1
        assert (
            value(samples, "bullmq_job_count", queue=NOTIFY, state="waiting")
            == (await job_counts(settings, NOTIFY))["waiting"]
        )
        doc = health(port)[1]
        assert doc["queues"][0]["paused"] is True and doc["queues"][0]["waiting"] == 2
        await queue.resume()
    samples = scrape(port)
    assert value(samples, "bullmq_queue_paused", queue=NOTIFY) == 0
    assert value(samples, "bullmq_job_count", queue=NOTIFY, state="waiting") == 2


async def test_client_list_forbidden_skips_the_worker_rule(env: dict[str, str], start_serve, prefix) -> None:  # type: ignore[no-untyped-def]
    """A managed Redis may deny CLIENT LIST: counts still work, `workers` is null, no false alarm."""
    from bullwait.dev.embedded import RedisServer

    with RedisServer(
        appendonly=False, extra_args=["--user", "mon", "on", ">s3cret", "~*", "&*", "+@all", "-client"]
    ) as server:
        url = f"redis://mon:s3cret@127.0.0.1:{server.port}/0"
        limited = Settings(redis_url=url, bullmq_prefix=prefix)
        serve = start_serve("-q", EXPIRY, extra_env={"REDIS_URL": url})
        port = serve.port()
        async with Producer(limited) as producer:
            await producer.queue(QueueKey.WAITLIST_EXPIRY).add("check-expiry", expiry_data(), {"delay": 3_600_000})
        status, doc = health(port)
        assert status == 200 and doc["queues"][0]["workers"] is None and doc["queues"][0]["delayed"] == 1, doc
        samples = scrape(port)
        assert value(samples, "bullmq_jobs_delayed", queue=EXPIRY) == 1
        assert not any(name == "bullmq_queue_workers" for name, _ in samples)
        assert serve.stop() == 0


async def test_serve_with_redis_down_reports_it(start_serve) -> None:  # type: ignore[no-untyped-def]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    serve = start_serve(extra_env={"REDIS_URL": dead, "HEALTH_REDIS_TIMEOUT": "1"})
    port = serve.port()
    status, doc = health(port)
    assert status == 503 and doc["healthy"] is False
    assert doc["problems"][0].startswith("redis: ") and "did not answer" in doc["problems"][0]
    samples = scrape(port)
    assert value(samples, "bullmq_redis_up") == 0
    assert not any(name == "bullmq_jobs_waiting" for name, _ in samples)
    assert get(port, "/health/live")[0] == 200
    assert get(port, "/nope")[0] == 404


def test_serve_port_in_use_is_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli(dict(env, METRICS_PORT=str(taken.getsockname()[1])), "serve", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bullwait: error: cannot serve metrics on 127.0.0.1:")
    assert "Traceback" not in result.stderr


def test_serve_refuses_when_disabled(env: dict[str, str]) -> None:
    result = invoke_cli(dict(env, QUEUE_MONITORING_ENABLED="false"), "serve", timeout=30)
    assert result.returncode == 2
    assert "QUEUE_MONITORING_ENABLED=false" in result.stderr and "Traceback" not in result.stderr


# --- bullwait worker ----------------------------------------------------------------------


async def _wait_counts(settings: Settings, name: str, **expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 30
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = await job_counts(settings, name)
        if all(counts[k] == v for k, v in expected.items()):
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: {counts}, expected {expected}")


async def test_worker_metrics_counters_and_health(settings: Settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(extra_env={"HEALTH_MAX_FAILED": "3"})
    record = listening(worker.log())
    assert record["host"] == "127.0.0.1", "binds loopback unless METRICS_HOST says otherwise"
    port = int(record["port"])

    # One process, two named connections per queue (Python name + Node name): one worker each.
    # The names are set when each worker's loop starts, just after "worker started" is logged.
    wait_until(lambda: all(q["workers"] == 1 for q in health(port)[1]["queues"]), message="workers == 1")
    status, doc = health(port)
    assert status == 200 and doc["healthy"] is True, doc

    bad = dict(notification_data(), customerPhone="not a phone")
    async with Producer(settings) as producer:
        notify = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
        for i in range(3):
            await notify.add("send-slot-available", notification_data(f"w-{i}"), {"attempts": 3})
        for _ in range(2):
            await notify.add("send-slot-available", bad, {"attempts": 3})
        await producer.queue(QueueKey.PREFERENCE_CALCULATION).add(
            "calculate-preferences", preference_data(), {"priority": 10}
        )
        due = datetime.now(UTC) + timedelta(milliseconds=300)
        timer = dict(expiry_data("w-t"), expiresAt=due.isoformat().replace("+00:00", "Z"))
        await producer.queue(QueueKey.WAITLIST_EXPIRY).add("check-expiry", timer, {"delay": 300, "jobId": "expiry_w-t"})
        counts = await _wait_counts(settings, NOTIFY, completed=3, failed=2, active=0)
        await _wait_counts(settings, PREFS, completed=1)
        await _wait_counts(settings, EXPIRY, completed=1)

        samples = scrape(port)
        assert_gauges_match(samples, NOTIFY, counts)
        assert value(samples, "bullmq_jobs_total", queue=NOTIFY, status="completed") == 3
        assert value(samples, "bullmq_jobs_total", queue=NOTIFY, status="failed") == 2
        assert value(samples, "bullmq_jobs_total", queue=NOTIFY, status="retried") == 0
        assert value(samples, "bullmq_jobs_total", queue=PREFS, status="completed") == 1
        assert value(samples, "bullmq_jobs_total", queue=EXPIRY, status="stalled") == 0
        assert value(samples, "bullmq_jobs_duration_seconds_count", queue=NOTIFY) == 5
        assert value(samples, "bullmq_jobs_duration_seconds_bucket", queue=NOTIFY, le="+Inf") == 5
        assert value(samples, "bullmq_expiry_lateness_seconds_count", queue=EXPIRY) == 1
        # BullMQ's own per-minute metrics, recorded by bullwait's workers (Worker option `metrics`).
        assert value(samples, "bullmq_job_completed_total", queue=NOTIFY) == 3
        assert value(samples, "bullmq_job_failed_total", queue=NOTIFY) == 2
        assert value(samples, "bullmq_job_completed_total", queue=EXPIRY) == 1
        assert value(samples, "bullmq_queue_workers", queue=NOTIFY) == 1
        assert health(port)[0] == 200

        # The third failed job crosses HEALTH_MAX_FAILED=3.
        await notify.add("send-slot-available", bad, {"attempts": 3})
        await _wait_counts(settings, NOTIFY, failed=3)
        status, doc = health(port)
        assert status == 503 and doc["healthy"] is False
        assert {q["name"]: q["failed"] for q in doc["queues"]}[NOTIFY] == 3
        assert any("3 failed jobs" in p and NOTIFY in p for p in doc["problems"]), doc
        assert value(scrape(port), "bullmq_jobs_total", queue=NOTIFY, status="failed") == 3

        # Removing the failed jobs makes it healthy again. (`bullwait clean --status failed` is
        # on the ops branch; bullmq's own Queue.clean does the same removal here.)
        removed = await notify.clean(0, 1000, "failed")
        assert len(removed) == 3
    status, doc = health(port)
    assert status == 200 and doc["healthy"] is True, doc
    assert get(port, "/health/live")[0] == 200
    assert worker.terminate() == 0


NODE_EXPORT = r"""
const { Queue } = require('bullmq');
const [port, prefix, name] = [Number(process.argv[1]), process.argv[2], process.argv[3]];
(async () => {
  const queue = new Queue(name, { connection: { host: '127.0.0.1', port, db: 0 }, prefix });
  process.stdout.write(await queue.exportPrometheusMetrics());
  await queue.close();
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.mark.node
@pytest.mark.skipif(not HAVE_NODE, reason=SKIP_REASON)
async def test_native_metrics_equal_node_export(settings: Settings, start_worker, redis_server, prefix) -> None:  # type: ignore[no-untyped-def]
    """Dashboards built on Node's `Queue.exportPrometheusMetrics()` read the same series from bullwait."""
    worker = start_worker("-q", NOTIFY)
    port = int(listening(worker.log())["port"])
    async with Producer(settings) as producer:
        notify = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
        for i in range(4):
            await notify.add("send-slot-available", notification_data(f"w-{i}"), {"attempts": 1})
        await notify.add("send-slot-available", {"broken": True}, {"attempts": 1})
        await notify.add("send-slot-available", notification_data(), {"delay": 3_600_000})
        await _wait_counts(settings, NOTIFY, completed=4, failed=1, delayed=1)
    out = subprocess.run(
        ["node", "-e", NODE_EXPORT, str(redis_server.port), prefix, NOTIFY],
        cwd=NODE_COMPAT,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    node = {}
    for family in text_string_to_metric_families(out + "\n"):
        for sample in family.samples:
            node[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    ours = scrape(port)
    assert len(node) == len(NODE_STATES) + 2
    for key, number in node.items():
        assert ours.get(key) == number, (key, number, ours.get(key))
    assert node[("bullmq_job_completed_total", (("queue", NOTIFY),))] == 4
    assert worker.terminate() == 0


def test_worker_without_monitoring_serves_nothing(start_worker) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    worker = start_worker("-q", EXPIRY, extra_env={"QUEUE_MONITORING_ENABLED": "false", "METRICS_PORT": str(port)})
    assert "monitoring disabled" in worker.log()
    assert "monitoring server listening" not in worker.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert worker.terminate() == 0


# --- slowloris: the server never starves the worker --------------------------------------

FD_LIMIT = 256  # RLIMIT_NOFILE of the attacked worker
ATTACKERS = 300  # more half-open connections than it has descriptors


class LimitedWorker(WorkerProcess):
    """`bullwait worker` started with a low RLIMIT_NOFILE."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        super().__init__(
            env, args, log_path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        )


def half_open(port: int, count: int) -> list[socket.socket]:
    """Connections that start a request and never finish it (connects do not wait for the server)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
    return socks


def trickle(socks: list[socket.socket], data: bytes) -> None:
    for sock in socks:
        # OSError: not accepted yet (still in the server's backlog or SYN queue)
        with contextlib.suppress(OSError):
            sock.send(data)


async def test_slowloris_on_the_metrics_port_does_not_starve_the_worker(settings: Settings, env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with FakeWhatsApp() as api:
        worker = LimitedWorker({**env, **api.env()}, ["-q", NOTIFY], tmp_path / "worker.log")
        try:
            worker.wait_for_log("worker started")
            port = int(listening(worker.log())["port"])
            attackers = half_open(port, ATTACKERS)
            try:
                trickle(attackers, b"GET /metrics HTTP/1.1\r\n")
                async with Producer(settings) as producer:
                    notify = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
                    for i in range(20):
                        await notify.add(
                            "send-slot-available",
                            notification_data(f"w-slow-{i}", salon_id=f"salon-slow-{i}"),
                            {"attempts": 1},
                        )
                    deadline = time.monotonic() + 30
                    counts = await job_counts(settings, NOTIFY)
                    while time.monotonic() < deadline and counts["completed"] + counts["failed"] < 20:
                        trickle(attackers, b"X-a: b\r\n")
                        await asyncio.sleep(0.2)
                        counts = await job_counts(settings, NOTIFY)
                    assert counts["completed"] == 20, f"jobs under attack: {counts}\n{worker.log()[-3000:]}"
                assert len(api.received()) == 20
            finally:
                for sock in attackers:
                    sock.close()
            # Once the attackers are gone, scrapes succeed again.
            wait_until(lambda: _answers(port), timeout=30, message="/metrics to answer after the attack")
            assert worker.terminate() == 0
        finally:
            worker.kill()
    lines = worker.log().splitlines()
    not_json = [line for line in lines if not _is_json(line)]
    assert not not_json, f"{len(not_json)} non-JSON lines, e.g.:\n" + "\n".join(not_json[:10])
    assert len(lines) < 80, f"{len(lines)} log lines for one attack: not throttled"
    trouble = [json.loads(line) for line in lines if "monitoring" in line and '"warning"' in line]
    assert trouble and all(t["level"] == "warning" and "kind" in t for t in trouble), trouble


def _answers(port: int) -> bool:
    try:
        return get(port, "/metrics", timeout=3)[0] == 200
    except OSError:
        return False


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# --- in-process: the observer, worker counting, options ----------------------------------


class _Job:
    def __init__(self, data: Any, attempts_made: int = 0) -> None:
        self.data = data
        self.attemptsMade = attempts_made


def test_job_metrics_observer_counts_and_never_raises() -> None:
    metrics = JobMetrics(queues=[EXPIRY, NOTIFY], expiry_queue=EXPIRY)
    late = (datetime.now(UTC) - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    payload = object()  # started runs with a valid payload; the lateness is read from the job's data
    metrics.started(EXPIRY, _Job({"expiresAt": late}), payload)  # counted: first attempt, 2 s late
    metrics.started(EXPIRY, _Job({"expiresAt": late}, attempts_made=1), payload)  # retry: not timer lateness
    metrics.started(EXPIRY, _Job({"expiresAt": "not a date"}), payload)  # ignored, no exception
    metrics.started(EXPIRY, _Job("not a dict"), payload)
    metrics.started(NOTIFY, _Job({"expiresAt": late}), payload)  # only the expiry queue
    metrics.finished(NOTIFY, _Job({}), "completed", 0.004)
    metrics.finished(NOTIFY, _Job({}), "delayed", 0.002)
    metrics.finished("another-queue", _Job({}), "failed", 0.5)
    metrics.stalled(EXPIRY, "job-1")
    reg = metrics.registry
    assert reg.get_sample_value("bullmq_expiry_lateness_seconds_count", {"queue": EXPIRY}) == 1
    assert reg.get_sample_value("bullmq_expiry_lateness_seconds_bucket", {"queue": EXPIRY, "le": "1.0"}) == 0
    assert reg.get_sample_value("bullmq_jobs_total", {"queue": NOTIFY, "status": "completed"}) == 1
    assert reg.get_sample_value("bullmq_jobs_total", {"queue": NOTIFY, "status": "delayed"}) == 1
    assert reg.get_sample_value("bullmq_jobs_total", {"queue": NOTIFY, "status": "failed"}) == 0
    assert reg.get_sample_value("bullmq_jobs_total", {"queue": "another-queue", "status": "failed"}) == 1
    assert reg.get_sample_value("bullmq_jobs_total", {"queue": EXPIRY, "status": "stalled"}) == 1
    assert reg.get_sample_value("bullmq_jobs_duration_seconds_bucket", {"queue": NOTIFY, "le": "0.005"}) == 2
    assert reg.get_sample_value("bullmq_jobs_duration_seconds_bucket", {"queue": NOTIFY, "le": "0.001"}) == 0


def test_job_metrics_fast_path_exposes_what_the_public_methods_do() -> None:
    """JobMetrics increments the histogram and counter values directly (it runs per job);
    the exposition must equal that of the same observations through observe()/inc()."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from bullwait.monitoring.metrics import DURATION_BUCKETS, LATENESS_BUCKETS

    amounts = [0.0, 0.001, 0.0010001, 0.0049, 0.005, 0.3, 10.0, 11.0, float("inf"), -1.0, float("nan"), 1e-9]
    metrics = JobMetrics(queues=[EXPIRY], expiry_queue=EXPIRY)
    public = CollectorRegistry()
    jobs = Counter("bullmq_jobs", "h", ["queue", "status"], registry=public)
    duration = Histogram("bullmq_jobs_duration_seconds", "h", ["queue"], buckets=DURATION_BUCKETS, registry=public)
    lateness = Histogram("bullmq_expiry_lateness_seconds", "h", ["queue"], buckets=LATENESS_BUCKETS, registry=public)
    for status in ("completed", "failed", "retried", "delayed", "stalled"):
        jobs.labels(EXPIRY, status)
    for i, amount in enumerate(amounts):
        status = ("completed", "failed", "retried")[i % 3]
        metrics.finished(EXPIRY, _Job({}), status, amount)
        duration.labels(EXPIRY).observe(amount)
        jobs.labels(EXPIRY, status).inc()
        metrics._lateness(amount)  # type: ignore[misc]
        lateness.labels(EXPIRY).observe(amount)
    metrics.stalled(EXPIRY, "job-1")
    jobs.labels(EXPIRY, "stalled").inc()

    def ours(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if line.startswith(("bullmq_jobs", "bullmq_expiry")) and not line.startswith("# HELP")
        ]

    assert ours(metrics.registry) == ours(public)


def test_stalled_event_reaches_the_observer(settings: Settings) -> None:
    metrics = JobMetrics(queues=[EXPIRY])
    pool = WorkerPool(settings, registry=None, queues=[], observer=metrics)  # type: ignore[arg-type]
    pool._stalled(EXPIRY, "42")
    assert metrics.registry.get_sample_value("bullmq_jobs_total", {"queue": EXPIRY, "status": "stalled"}) == 1


def test_workers_record_bullmq_metrics(settings: Settings) -> None:
    opts = worker_options(QueueKey.WAITLIST_EXPIRY, settings, "w")
    assert opts["metrics"] == {"maxDataPoints": 10080}
    off = worker_options(QueueKey.WAITLIST_EXPIRY, settings.with_overrides(bullmq_metrics_max_data_points=0), "w")
    assert "metrics" not in off
    assert queue_name(QueueKey.WAITLIST_EXPIRY, settings) == EXPIRY


def test_health_counts_workers_as_stats_does() -> None:
    """Two processes sharing BULLWAIT_WORKER_NAME are two workers for `stats` and /health alike."""
    from bullwait.ops.snapshot import count_workers

    clients = [
        {"name": "bull:d2FpdGxpc3QtZXhwaXJ5:w:shared", "cmd": "bzpopmin"},
        {"name": "bull:waitlist-expiry:w:shared", "cmd": "evalsha"},
        {"name": "bull:d2FpdGxpc3QtZXhwaXJ5:w:shared", "cmd": "bzpopmin"},
        {"name": "bull:waitlist-expiry:w:shared", "cmd": "evalsha"},
    ]
    from bullwait.ops.snapshot import QueueSnapshot, count_queue_workers

    snap = QueueSnapshot(name="waitlist-expiry")
    count_queue_workers([snap], clients, "bull")
    assert snap.workers == count_workers(clients, "bull", "waitlist-expiry")[0] == 2
