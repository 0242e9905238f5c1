from __future__ import annotations

import pytest

from bullwait.connection import describe_redis, redis_options
from bullwait.errors import SettingsError
from bullwait.settings import QueueNaming, load_settings

from conftest import run_cli


def test_defaults_are_the_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    s = load_settings()
    assert (s.redis_host, s.redis_port, s.redis_queue_db) == ("localhost", 6379, 1)
    assert s.waitlist_expiry_concurrency == 5
    assert s.waitlist_notification_concurrency == 20
    assert s.preference_calculation_concurrency == 2
    assert s.waitlist_notification_rate_limit == 10
    assert s.queue_monitoring_enabled is True
    assert s.queue_log_level == "info"
    assert s.bullmq_prefix == "bull"
    assert s.bullwait_queue_names is QueueNaming.CURRENT


@pytest.mark.parametrize(
    "name,value",
    [
        ("REDIS_PORT", "not-a-port"),
        ("REDIS_PORT", "70000"),
        ("REDIS_QUEUE_DB", "-1"),
        ("WAITLIST_EXPIRY_CONCURRENCY", "0"),
        ("WAITLIST_NOTIFICATION_RATE_LIMIT", "ten"),
        ("QUEUE_LOG_LEVEL", "loud"),
        ("QUEUE_MONITORING_ENABLED", "maybe"),
        ("REDIS_URL", "http://localhost"),
        ("BULLWAIT_QUEUE_NAMES", "colons"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_exits_2_with_one_line(env: dict[str, str]) -> None:
    result = run_cli(dict(env, WAITLIST_EXPIRY_CONCURRENCY="-3"), "worker")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WAITLIST_EXPIRY_CONCURRENCY" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_password_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "ftp://user:hunter2@host")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_url_overrides_host_port_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    s = load_settings(redis_url="rediss://u:secret@cache.example:6380/4")
    opts = redis_options(s)
    assert (opts["host"], opts["port"], opts["db"], opts["username"], opts["password"]) == (
        "cache.example", 6380, 4, "u", "secret"
    )
    assert opts["ssl"] is True
    assert "secret" not in describe_redis(s)


def test_env_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("REDIS_QUEUE_DB=7\nWAITLIST_EXPIRY_CONCURRENCY=9\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.redis_queue_db, s.waitlist_expiry_concurrency) == (7, 9)


def test_unix_socket_url() -> None:
    opts = redis_options(load_settings(redis_url="unix:///run/redis/redis.sock?db=1"))
    assert opts["unix_socket_path"] == "/run/redis/redis.sock" and "path" not in opts
    assert opts["db"] == 1


def test_redis_named_only_in_env_file_counts_as_configured(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`demo --embedded-redis auto` must not start a private Redis when `.env` names one."""
    monkeypatch.chdir(tmp_path)
    assert load_settings().redis_configured is False
    (tmp_path / ".env").write_text("REDIS_HOST=10.9.9.9\n")
    assert load_settings().redis_configured is True
