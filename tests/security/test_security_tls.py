"""TLS (`rediss://`) against a redis-server with a private CA made by the test."""

from __future__ import annotations

from typing import Any

import pytest

from bullwait.errors import RedisUnavailable
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob, PreferenceJob
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.jobdata import notification_data, preference_data
from helpers.reliability import COUNTING, counts, eventually
from helpers.security import ADMIN_PASSWORD, TlsRedisServer, tls_server  # noqa: F401


def _tls_url(server: TlsRedisServer, password: str = ADMIN_PASSWORD) -> str:
    return f"rediss://default:{password}@127.0.0.1:{server.tls_port}/0"


async def test_worker_and_producer_over_tls(tls_server: TlsRedisServer, prefix: str, start_worker: Any) -> None:
    url = _tls_url(tls_server)
    ca = tls_server.ca_file  # type: ignore[attr-defined]
    worker = start_worker(extra_env={**COUNTING, "REDIS_URL": url, "REDIS_TLS_CA_FILE": ca})
    settings = Settings(redis_url=url, redis_tls_ca_file=ca, bullmq_prefix=prefix)
    async with Producer(settings) as producer:
        await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
        await producer.queue_preferences(PreferenceJob.model_validate(preference_data()))
        await producer.schedule_expiry(new_expiry("w-tls", "s", "c", "salon-1", delay_ms=200))

        async def all_done() -> bool:
            return [(await counts(producer, key))["completed"] for key in QueueKey] == [1, 1, 1]

        await eventually(all_done, timeout=30, message="jobs completed over TLS")
    # Every named connection of the worker came in on the TLS port.
    admin = tls_server.admin()
    try:
        named = [c for c in admin.client_list() if c.get("name", "").startswith(prefix)]
    finally:
        admin.close()
    assert len(named) >= 6, named  # three queues, a main and a blocking connection each
    assert {int(c["laddr"].rsplit(":", 1)[1]) for c in named} == {tls_server.tls_port}
    assert worker.terminate() == 0
    assert ADMIN_PASSWORD not in worker.log()


async def test_untrusted_certificate_is_a_clear_error(tls_server: TlsRedisServer, prefix: str) -> None:
    # No REDIS_TLS_CA_FILE: the private CA is not trusted, so the connection must fail.
    settings = Settings(redis_url=_tls_url(tls_server), bullmq_prefix=prefix, bullwait_redis_retry_timeout=0.5)
    async with Producer(settings) as producer:
        with pytest.raises(RedisUnavailable) as info:
            await producer.send_slot_available(NotificationJob.model_validate(notification_data()))
    message = str(info.value)
    assert "certificate verify failed" in message.lower() or "ssl" in message.lower(), message
    assert "job not added" in message and ADMIN_PASSWORD not in message and "\n" not in message


def test_worker_refuses_untrusted_certificate_with_one_line_per_attempt(
    tls_server: TlsRedisServer, start_worker: Any
) -> None:
    worker = start_worker(extra_env={"REDIS_URL": _tls_url(tls_server)}, ready=False)
    worker.wait_for_log("redis unreachable, retrying", count=2, timeout=20)
    assert worker.terminate(timeout=20) == 0
    log = worker.log()
    assert "certificate" in log.lower() and ADMIN_PASSWORD not in log
