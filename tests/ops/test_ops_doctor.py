"""`bullwait doctor`: each check a line `ok|warn|fail  <check>  <detail>`; exit 0 / 1 / 2."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest
import redis

from bullwait.dev.embedded import RedisServer, free_port
from bullwait.engine.worker import node_client_name
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.common import BULLWAIT, ROOT
from helpers.ops_states import populate

LINE = re.compile(r"^(ok|warn|fail)  +(\S+)  +(\S.*)$")


def _checks(stdout: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}"
        found[match.group(2)] = (match.group(1), match.group(3))
    return found


@pytest.fixture
def tuned_redis() -> Iterator[RedisServer]:
    """A server set up as the doctor recommends (hz 100, noeviction)."""
    server = RedisServer(appendonly=False, extra_args=["--hz", "100"]).start()
    yield server
    server.cleanup()


async def test_doctor_on_jobs_in_every_state(settings: Settings, env: dict[str, str], sync_redis) -> None:
    pop = await populate(settings, sync_redis)
    result = invoke_cli(env, "doctor")
    assert result.returncode == 2, result
    checks = _checks(result.stdout)
    e, n = pop.expiry, pop.notification
    assert checks["redis"][0] == "ok" and "PONG from" in checks["redis"][1]
    assert checks["maxmemory-policy"] == ("ok", "noeviction")
    assert checks["hz"][0] == "ok" and "set `hz 100`" in checks["hz"][1]  # the suite's server runs the default hz 10
    assert checks["clock"][0] == "ok" and "Redis TIME" in checks["clock"][1]
    assert checks["memory"][0] == "ok" and checks["queue-names"][0] == "ok"
    assert (
        checks[f"{e}/overdue"][0] == "fail"
        and "1 delayed job(s) past due, the oldest by 2m" in checks[f"{e}/overdue"][1]
    )
    assert checks[f"{e}/stalled"][0] == "warn" and checks[f"{e}/stalled"][1].startswith(
        "1 active job(s) without a lock"
    )
    assert checks[f"{e}/workers"][0] == "warn" and f"bullwait worker --queue {e}" in checks[f"{e}/workers"][1]
    assert checks[f"{n}/paused"][0] == "warn" and f"bullwait resume {n}" in checks[f"{n}/paused"][1]
    assert checks[f"{e}/paused"][0] == "ok"
    assert checks[f"{e}/failed"] == ("ok", "3 failed (limit 100)")
    assert checks[f"{e}/bullmq-version"][0] == "ok"
    # HEALTH_MAX_FAILED is honoured; --json carries the same checks and exit code.
    result = invoke_cli(dict(env, HEALTH_MAX_FAILED="2"), "doctor", "--json", "--queue", e)
    doc = json.loads(result.stdout)
    assert result.returncode == 2 and doc["exit_code"] == 2
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name[f"{e}/failed"]["status"] == "warn" and "HEALTH_MAX_FAILED=2" in by_name[f"{e}/failed"]["detail"]
    assert not any(c["name"].startswith(n) for c in doc["checks"])


async def test_doctor_meta_version(settings: Settings, env: dict[str, str], sync_redis) -> None:
    name = queue_name(QueueKey.WAITLIST_EXPIRY, settings)
    meta = f"{settings.bullmq_prefix}:{name}:meta"
    check = f"{name}/bullmq-version"

    def doctor() -> tuple[str, str]:
        return _checks(invoke_cli(env, "doctor", "--queue", name).stdout)[check]

    sync_redis.hset(meta, "version", "bullmq:6.7.0")
    assert doctor()[0] == "ok" and "bullmq:6.7.0 pairs with bullmq-py 3.4.4" in doctor()[1]
    sync_redis.hset(meta, "version", "bullmq:5.1.0")
    assert doctor()[0] == "warn"
    sync_redis.hset(meta, "version", "bullmq:4.18.3")
    status, detail = doctor()
    assert status == "warn" and "never run Node 4.x workers" in detail
    # A Node worker connected to the queue (its blocking connection, named as Node names it).
    node_worker = redis.Redis(port=sync_redis.connection_pool.connection_kwargs["port"])
    node_worker.client_setname(node_client_name(settings.bullmq_prefix, name, "nest-1"))
    try:
        status, detail = doctor()
        assert status == "fail" and "Node 4.x workers and Python workers must not share a queue" in detail
    finally:
        node_worker.close()


def test_doctor_healthy_server_exits_0(tuned_redis: RedisServer, env: dict[str, str], start_worker) -> None:
    tuned = dict(env, REDIS_URL=f"{tuned_redis.url}/0")
    start_worker(extra_env={"REDIS_URL": tuned["REDIS_URL"]})
    result = invoke_cli(tuned, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _checks(result.stdout)
    assert checks["hz"][0] == "ok"
    for key in QueueKey:
        q = queue_name(key, Settings())
        assert checks[f"{q}/workers"] == ("ok", "1 (Node 0, Python 1)")


def test_doctor_legacy_names_and_eviction(env: dict[str, str]) -> None:
    server = RedisServer(
        appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru", "--maxmemory", "1mb"]
    ).start()
    try:
        result = invoke_cli(dict(env, REDIS_URL=f"{server.url}/0", BULLWAIT_QUEUE_NAMES="legacy"), "doctor")
    finally:
        server.cleanup()
    assert result.returncode == 2
    checks = _checks(result.stdout)
    assert checks["maxmemory-policy"][0] == "fail" and "noeviction" in checks["maxmemory-policy"][1]
    assert checks["memory"][0] in ("warn", "fail") and "of maxmemory 1.0 MiB" in checks["memory"][1]
    assert checks["queue-names"][0] == "warn" and "waitlist:expiry" in checks["queue-names"][1]
    assert "5.12.12" in checks["queue-names"][1]


def test_doctor_unreachable_redis(env: dict[str, str]) -> None:
    dead = dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run([*BULLWAIT, "doctor"], env=dead, capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2 and result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fail  redis  cannot reach Redis")


def test_doctor_reads_workers_with_the_queues(tuned_redis: RedisServer, env: dict[str, str]) -> None:
    """CLIENT LIST travels in the queue reader's round trip, once (a fresh server has the
    reader's script loaded and the queues read again); refused, each queue says so."""
    admin = redis.Redis(port=tuned_redis.port, decode_responses=True)
    admin.config_resetstat()
    result = invoke_cli(dict(env, REDIS_URL=f"{tuned_redis.url}/0"), "doctor")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert admin.info("commandstats")["cmdstat_client|list"]["calls"] == 1
    admin.acl_setuser("no-list", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-client|list"])
    refused = invoke_cli(dict(env, REDIS_URL=f"redis://no-list:pw@127.0.0.1:{tuned_redis.port}/0"), "doctor")
    checks = _checks(refused.stdout)
    refusal = "cannot tell: the server refused CLIENT LIST (allow it for this user)"
    for key in QueueKey:
        assert checks[f"{queue_name(key, Settings())}/workers"] == ("warn", refusal)
    admin.close()
