"""Redis ACL: bullwait runs with the least-privilege user docs/security.md documents; that user
cannot do anything else; wrong credentials give one line naming the settings to fix."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bullwait.errors import RedisUnavailable
from bullwait.ops.acl import acl_rules
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob, PreferenceJob
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cli import invoke_cli
from helpers.common import ROOT, run_cli
from helpers.jobdata import notification_data, preference_data
from helpers.nodecompat import HAVE_NODE, SKIP_REASON, nest, node_json, seed_entry, seed_slot, start_board, start_node  # noqa: F401 (fixtures)
from helpers.reliability import COUNTING, counts, eventually
from helpers.security import AuthRedisServer, acl_refusals, acl_server, least_privilege_user  # noqa: F401


def _url(server: AuthRedisServer, user: str, password: str, db: int = 0) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/{db}"


async def test_least_privilege_user_runs_workers_and_producer(
    acl_server: AuthRedisServer, env: dict[str, str], prefix: str, start_worker: Any
) -> None:
    user, password = least_privilege_user(acl_server, prefix, db=1)  # SELECT 1: allowed for this db only
    url = _url(acl_server, user, password, db=1)
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
    demo = run_cli(
        dict(env, REDIS_URL=url),
        "demo",
        "--customers",
        "3",
        "--timer-ms",
        "1500",
        "--timeout",
        "40",
        "--embedded-redis",
        "never",
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "NOPERM" not in demo.stderr
    assert acl_refusals(acl_server, user) == []


@pytest.mark.node
@pytest.mark.skipif(not HAVE_NODE, reason=SKIP_REASON)
async def test_node_side_board_and_ops_need_nothing_more(
    acl_server: AuthRedisServer, env: dict[str, str], prefix: str, start_node: Any, start_board: Any
) -> None:
    """Node bullmq 6 (worker, NestJS producer, Queue getters), Bull Board and the ops CLI under
    the same user: every command they send is allowed (the ACL LOG stays empty)."""
    user, password = least_privilege_user(acl_server, prefix)
    url = _url(acl_server, user, password)
    user_env = dict(env, REDIS_URL=url)
    settings = Settings(redis_url=url, bullmq_prefix=prefix)
    note = NotificationJob.model_validate(notification_data("w-acl-fail"))
    async with Producer(settings) as producer:
        await producer.add(QueueKey.WAITLIST_NOTIFICATION, note, job_id="acl-fail", attempts=1)
    start_node(
        "compat/worker.js",
        "WAITLIST_NOTIFICATION",
        "--fail-ids",
        "acl-fail",
        extra_env={"REDIS_URL": url},
        ready="node worker ready",
    )
    sent = nest(user_env, "sendSlotAvailableNotification", {"waitlistEntry": seed_entry("w-acl"), "slot": seed_slot()})
    nest(user_env, "notifyWaitlistCustomer", {"waitlistEntry": seed_entry("w-acl2"), "slot": seed_slot()})
    assert nest(user_env, "cancelExpiryTimer", {"waitlistId": "w-acl2"})["cancelled"] is True
    nest(user_env, "getQueueStats")

    def node_view() -> Any:
        return node_json(user_env, "compat/inspect.js", "--jobs", f"WAITLIST_NOTIFICATION:{sent['jobId']},acl-fail")

    view = node_view()
    for _ in range(100):
        jobs = view["WAITLIST_NOTIFICATION"]["jobs"]
        if jobs[sent["jobId"]]["state"] == "completed" and jobs["acl-fail"]["state"] == "failed":
            break
        view = node_view()
    assert view["WAITLIST_NOTIFICATION"]["workers"], "getWorkers (CLIENT LIST) sees the Node worker"
    board = start_board(extra_env={"REDIS_URL": url})
    assert board.get("/api/queues").status_code == 200
    assert board.get("/api/queues/waitlist-notification/workers").status_code == 200
    assert board.get("/api/redis/stats").status_code == 200
    for args in (
        ("stats",),
        ("doctor",),
        ("jobs", "list", "waitlist-notification", "--status", "failed"),
        ("jobs", "show", "waitlist-notification", "acl-fail"),
        ("clean", "--queue", "waitlist-notification", "--status", "completed", "--grace", "0"),
        ("retry", "--queue", "waitlist-notification"),
        ("promote", "--queue", "waitlist-expiry"),
        ("pause", "waitlist-preference-calculation"),
        ("resume", "waitlist-preference-calculation"),
    ):
        result = invoke_cli(user_env, *args, "--json")
        output = result.stdout + result.stderr
        assert result.returncode in (0, 1) and "NOPERM" not in output, (args, result.stderr[-1000:])
    # `doctor` tries CONFIG GET for one optional check and says it skipped it: the only refusal.
    assert [r for r in acl_refusals(acl_server, user) if "config|get" not in r] == []


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
def test_restricted_user_is_refused_everything_else(
    acl_server: AuthRedisServer, prefix: str, command: tuple[str, ...]
) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    client = redis.Redis(port=acl_server.port, username=user, password=password, decode_responses=True)
    try:
        assert client.set(f"{prefix}:own", "1")  # its own keys: allowed
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


OTHER_APP_KEYS = ("otherapp:session:alice", "otherapp:invoice:2024-17", "bull-staging:waitlist-expiry:meta")


def test_other_apps_key_names_do_not_leak(acl_server: AuthRedisServer, prefix: str) -> None:
    """Commands that name no key escape `~prefix:*`: none may list, count or push other keys' names."""
    admin = acl_server.admin()
    try:
        for db in (0, 1):
            admin.execute_command("SELECT", db)
            for key in OTHER_APP_KEYS:
                admin.set(key, "x")
    finally:
        admin.close()
    user, password = least_privilege_user(acl_server, prefix)
    client = redis.Redis(port=acl_server.port, username=user, password=password, decode_responses=True)
    own = f"{prefix}:own"
    refused = [
        ("SCAN", "0", "MATCH", "otherapp*", "COUNT", "1000"),
        ("SCAN", "0"),
        ("RANDOMKEY",),
        ("KEYS", "*"),
        ("DBSIZE",),
        ("MOVE", own, "1"),
        ("COPY", own, f"{prefix}:copy", "DB", "1"),
        ("SWAPDB", "0", "1"),
        ("CLIENT", "TRACKING", "on", "BCAST"),
        ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "otherapp"),
        ("EVAL", "return redis.call('SCAN', '0')", "0"),
        ("EVAL", "return redis.call('RANDOMKEY')", "0"),
        ("SORT", own, "BY", "nosort", "GET", "otherapp:*"),
        ("OBJECT", "ENCODING", OTHER_APP_KEYS[0]),
        ("SLOWLOG", "GET"),
        ("SCRIPT", "DEBUG", "YES"),
        ("FUNCTION", "LIST"),
        ("PUBSUB", "CHANNELS"),
        ("SELECT", "1"),  # last: where allowed it moves this connection to the other database
    ]
    try:
        client.lpush(own, "1")
        seen = []
        for command in refused:
            try:
                seen.append((command, client.execute_command(*command)))
            except redis.exceptions.ResponseError as exc:  # NOPERM, or its form from inside a script
                if "permission" not in str(exc) and "can't run this command" not in str(exc):
                    seen.append((command, f"allowed, then failed: {exc}"))
        assert seen == [], f"allowed to the restricted user: {seen}"
        # What stays visible names no key: INFO has per-db counts, CLIENT LIST the connections.
        visible = str(client.info()) + str(client.client_list())
        assert not [k for k in OTHER_APP_KEYS if k in visible]
    finally:
        client.close()


def test_the_docs_document_the_tested_acl() -> None:
    assert acl_rules("bull") in (ROOT / "docs" / "security.md").read_text()


@pytest.mark.parametrize("how", ["wrong-password", "unknown-user", "no-credentials"])
def test_wrong_credentials_one_line_naming_the_settings(
    acl_server: AuthRedisServer, env: dict[str, str], prefix: str, how: str
) -> None:
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
