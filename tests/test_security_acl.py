"""Redis ACL: bullwait runs with the least-privilege user the README documents; that user
cannot do anything else; wrong credentials give one line naming the settings to fix."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bullwait.acl import acl_rules
from bullwait.catalog import QueueKey
from bullwait.errors import RedisUnavailable
from bullwait.payloads import NotificationJob, PreferenceJob
from bullwait.producer import Producer, new_expiry
from bullwait.settings import Settings

from conftest import ROOT, run_cli
from fixtures import notification_data, preference_data
from reliability_helpers import COUNTING, counts, eventually
from security_helpers import AuthRedisServer, acl_server, least_privilege_user  # noqa: F401


def _url(server: AuthRedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


async def test_least_privilege_user_runs_workers_and_producer(
    acl_server: AuthRedisServer, env: dict[str, str], prefix: str, start_worker: Any
) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    url = _url(acl_server, user, password)
    worker = start_worker(extra_env={**COUNTING, "REDIS_URL": url})
    settings = Settings(redis_url=url, bullmq_prefix=prefix)
    async with Producer(settings) as producer:
        await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
        await producer.queue_preferences(PreferenceJob.model_validate(preference_data()))
        await producer.schedule_expiry(new_expiry("w-acl", "s", "c", "salon-1", delay_ms=300))
        await producer.schedule_expiry(new_expiry("w-cancel", "s", "c", "salon-1", delay_ms=60_000))
        assert (await producer.cancel_expiry_timer("w-cancel")).cancelled

        async def all_done() -> bool:
            done = [(await counts(producer, key))["completed"] for key in QueueKey]
            return done == [1, 1, 1]

        await eventually(all_done, timeout=30, message="jobs completed under the restricted user")
        workers = await producer.queue(QueueKey.WAITLIST_EXPIRY).get_workers()  # CLIENT LIST
        assert workers and "not supported" not in str(workers), "CLIENT LIST is allowed: the worker is visible"
    log = worker.log()
    assert "NOPERM" not in log and "worker error" not in log, log
    assert worker.terminate() == 0
    # The built-in processors and the demo traffic too.
    demo = run_cli(dict(env, REDIS_URL=url), "demo", "--customers", "3", "--timer-ms", "1500", "--timeout", "40", "--embedded-redis", "never")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "NOPERM" not in demo.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "requirepass"),
        ("KEYS", "*"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SWAPDB", "0", "1"),
        ("SHUTDOWN", "NOSAVE"),
        ("SCRIPT", "FLUSH"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("ACL", "SETUSER", "intruder", "on", ">x", "~*", "+@all"),
        ("MONITOR",),
        ("GET", "someone-else:key"),
        ("SET", "someone-else:key", "x"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "someone-else:key"),
        ("PUBLISH", "channel", "x"),
    ],
)
def test_restricted_user_is_refused_everything_else(acl_server: AuthRedisServer, prefix: str, command: tuple[str, ...]) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    client = redis.Redis(port=acl_server.port, username=user, password=password, decode_responses=True)
    try:
        assert client.set(f"{prefix}:own", "1")  # its own keys: allowed
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


def test_readme_documents_the_tested_acl() -> None:
    readme = (ROOT / "README.md").read_text()
    assert acl_rules("bull") in readme


@pytest.mark.parametrize("how", ["wrong-password", "unknown-user", "no-credentials"])
def test_wrong_credentials_one_line_naming_the_settings(acl_server: AuthRedisServer, env: dict[str, str], prefix: str, how: str) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    url = {
        "wrong-password": _url(acl_server, user, "not-the-" + password),
        "unknown-user": _url(acl_server, "nobody", password),
        "no-credentials": f"redis://127.0.0.1:{acl_server.port}/0",
    }[how]
    result = run_cli(dict(env, REDIS_URL=url), "worker", timeout=30)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("bullwait: error:")]
    assert len(lines) == 1 and "REDIS_USERNAME / REDIS_PASSWORD" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stderr + result.stdout


async def test_producer_with_wrong_password_raises_at_once(acl_server: AuthRedisServer, prefix: str) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    settings = Settings(redis_url=_url(acl_server, user, "wrong-" + password), bullmq_prefix=prefix)
    async with Producer(settings) as producer:
        with pytest.raises(RedisUnavailable) as info:
            await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
    message = str(info.value)
    assert "REDIS_USERNAME / REDIS_PASSWORD" in message and "job not added" in message
    assert password not in message and "\n" not in message
