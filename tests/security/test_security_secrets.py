"""Secrets never leave: passwords and tokens stay out of logs, CLI output, job data,
metrics labels and values, the health JSON, exception messages and reprs; phone numbers
are masked in logs.

Extend `outputs` when new surfaces land (Bull Board)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.errors import BullwaitError, SettingsError
from bullwait.settings import Settings, load_settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer

from helpers.common import run_cli
from helpers.jobdata import notification_data
from helpers.reliability import counts, eventually
from helpers.security import AuthRedisServer, acl_server, least_privilege_user  # noqa: F401

TOKEN = "EAAG" + uuid.uuid4().hex + uuid.uuid4().hex
APP_SECRET = "appsecret" + uuid.uuid4().hex
PHONE = "+34699887766"


def _http(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def _monitoring_port(log: str) -> int:
    """The port of the worker's metrics/health server (METRICS_PORT=0: any free one)."""
    for line in log.splitlines():
        if "monitoring server listening" in line:
            return int(json.loads(line)["port"])
    raise AssertionError(f"no 'monitoring server listening' in log:\n{log}")


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... leaked:\n{text[-3000:]}"


async def test_no_secret_in_output_logs_or_redis(
    acl_server: AuthRedisServer, env: dict[str, str], prefix: str, start_worker: Any
) -> None:
    user, password = least_privilege_user(acl_server, prefix)
    url = f"redis://{user}:{password}@127.0.0.1:{acl_server.port}/0"
    api = FakeWhatsApp().start()  # the token is used for real, against a loopback Cloud API
    secret_env = {
        "REDIS_URL": url,
        **api.env(token=TOKEN),
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "QUEUE_LOG_LEVEL": "debug",  # the most verbose the worker gets
    }
    outputs: list[str] = []

    worker = start_worker(extra_env=secret_env)
    async with Producer(Settings(redis_url=url, bullmq_prefix=prefix)) as producer:
        await producer.send_slot_available(NotificationJob.model_validate(notification_data(phone=PHONE)))
        bad = dict(notification_data(phone=PHONE), slotDetails="nope")
        await producer.queue(QueueKey.WAITLIST_NOTIFICATION).add("send-slot-available", bad, {})

        async def processed() -> bool:
            c = await counts(producer, QueueKey.WAITLIST_NOTIFICATION)
            return c["completed"] == 1 and c["failed"] == 1

        await eventually(processed, timeout=30, message="good and bad job processed")

        # The worker's metrics and health server (METRICS_PORT=0 in the test env), scraped
        # while it runs with the password in REDIS_URL and the token configured.
        port = _monitoring_port(worker.log())
        metrics = _http(port, "/metrics")
        assert "bullmq_job_completed_total" in metrics and "waitlist-notification" in metrics, metrics[:2000]
        queues = _http(port, "/health/queues")
        assert json.loads(queues)["queues"], queues
        outputs += [metrics, queues, _http(port, "/health/live"), _http(port, "/")]
    assert worker.terminate() == 0
    outputs.append(worker.log())
    assert "job completed" in outputs[-1] and "job failed" in outputs[-1]
    assert api.sent() and all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in api.sent())

    # The demo, with the credentials in the URL and then in REDIS_USERNAME / REDIS_PASSWORD.
    for variant in (
        dict(env, **secret_env),
        {
            **env,
            **secret_env,
            "REDIS_URL": f"redis://127.0.0.1:{acl_server.port}/0",
            "REDIS_USERNAME": user,
            "REDIS_PASSWORD": password,
        },
    ):
        demo = run_cli(
            variant, "demo", "--customers", "3", "--timer-ms", "1500", "--timeout", "40", "--embedded-redis", "never"
        )
        assert demo.returncode == 0, demo.stderr[-2000:]
        outputs += [demo.stdout, demo.stderr]

    # Errors: wrong password, bad setting next to a password, catalog.
    wrong = run_cli({**env, **secret_env, "REDIS_URL": url.replace(password, password + "x")}, "worker", timeout=30)
    assert wrong.returncode == 3
    bad_setting = run_cli(dict(env, **secret_env, REDIS_PASSWORD=password, REDIS_PORT="nope"), "worker", timeout=30)
    assert bad_setting.returncode == 2
    catalog = run_cli(dict(env, **secret_env), "catalog", "--json", timeout=30)
    outputs += [wrong.stdout, wrong.stderr, bad_setting.stdout, bad_setting.stderr, catalog.stdout, catalog.stderr]

    api.stop()
    text = "\n".join(outputs)
    _assert_clean(text, password, TOKEN, APP_SECRET)
    _assert_clean(text, PHONE, "+34600111", "+3460011")  # log lines carry masked phones only
    assert "+34*******66" in text

    # Nothing bullwait wrote into Redis carries a secret (the phone is job data: it must stay).
    admin = acl_server.admin()
    try:
        stored = []
        for key in admin.scan_iter(match="*", count=1000):
            kind = admin.type(key)
            if kind == "hash":
                stored.append(str(admin.hgetall(key)))
            elif kind == "string":
                stored.append(str(admin.get(key)))
            elif kind == "stream":
                stored.append(str(admin.xrange(key)))
            elif kind == "list":
                stored.append(str(admin.lrange(key, 0, -1)))
            elif kind == "zset":
                stored.append(str(admin.zrange(key, 0, -1)))
            stored.append(key)
        stored.append(str(admin.client_list()))
    finally:
        admin.close()
    _assert_clean("\n".join(stored), password, TOKEN, APP_SECRET)


async def test_exception_messages_and_reprs_hide_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from bullwait.dev.embedded import free_port

    password = "pw-" + uuid.uuid4().hex
    settings = Settings(
        redis_url=f"redis://someone:{password}@127.0.0.1:{free_port()}/0",
        redis_password=password,
        bullwait_redis_retry_timeout=0.2,
    )
    for text in (repr(settings), str(settings)):
        _assert_clean(text, password)
    async with Producer(settings) as producer:
        with pytest.raises(BullwaitError) as info:
            await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
    assert "cannot reach Redis" in str(info.value) and "job not added" in str(info.value)
    _assert_clean(str(info.value), password)
    monkeypatch.setenv("REDIS_PASSWORD", password)
    monkeypatch.setenv("REDIS_URL", f"ftp://x:{password}@host")
    with pytest.raises(SettingsError) as bad:
        load_settings()
    _assert_clean(str(bad.value), password)


def test_log_redaction_covers_tokens_in_urls_and_headers() -> None:
    from bullwait.logs import redact

    event = redact(
        None,
        "info",
        {
            "event": "whatsapp request failed",
            "error": f"401 for url https://graph.facebook.com/v19.0/1/messages?access_token={TOKEN}",
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "detail": f"Authorization: Bearer {TOKEN}",
            "whatsapp_access_token": TOKEN,
            "customerPhone": PHONE,
            "to": PHONE,
        },
    )
    _assert_clean(str(event), TOKEN, PHONE)


async def test_health_and_metrics_with_redis_down_hide_the_password(
    env: dict[str, str], prefix: str, start_worker: Any
) -> None:
    """The 503 health JSON names Redis and the error; with a password in REDIS_URL the
    password stays out of it, out of /metrics, and out of the worker's log."""
    password = "pw-" + uuid.uuid4().hex
    server = AuthRedisServer(appendonly=False, extra_args=["--requirepass", password]).start()
    try:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        worker = start_worker(
            "-q",
            "waitlist-expiry",
            extra_env={"REDIS_URL": url, "WHATSAPP_ACCESS_TOKEN": TOKEN, "WHATSAPP_PHONE_NUMBER_ID": "1"},
        )
        port = _monitoring_port(worker.log())
        up = json.loads(_http(port, "/health/queues"))
        assert up["queues"], up
        server.kill()  # Redis gone while the worker runs
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/queues", timeout=15)
            raise AssertionError("/health/queues answered 200 with Redis down")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            down = exc.read().decode()
        assert "did not answer" in down and "redis://:***@127.0.0.1" in down, down
        metrics = _http(port, "/metrics")
        assert "bullmq_redis_up 0.0" in metrics, metrics[-2000:]
        outputs = [json.dumps(up), down, metrics, worker.log()]
    finally:
        server.cleanup()
    _assert_clean("\n".join(outputs), password, TOKEN)
