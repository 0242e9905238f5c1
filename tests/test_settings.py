from __future__ import annotations

import pytest

from bullwait.engine.connection import describe_redis, redis_options
from bullwait.errors import SettingsError
from bullwait.settings import QueueNaming, load_settings

from helpers.cli import invoke_cli


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
    result = invoke_cli(dict(env, WAITLIST_EXPIRY_CONCURRENCY="-3"), "worker")
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
        "cache.example",
        6380,
        4,
        "u",
        "secret",
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


# --- REDIS_URL: one parse, one-line refusals that never show the password (item 8) ---

SECRET = "S3cretPw"


@pytest.mark.parametrize(
    "url, advice",
    [
        (f"redis://:{SECRET}#x@localhost:6379/1", "%23"),
        (f"redis://:{SECRET}/x@localhost:6379/1", "%2F"),
        (f"redis://:{SECRET}?x@localhost:6379/1", "%3F"),
        (f"redis://app:{SECRET}#@cache.example:6380/2", "percent-encode"),
        (f"redis://:{SECRET}/1", "port is not a number"),  # the '@' before the host is missing
        ("redis://[", "both brackets"),
        ("redis://[::1:6379/1", "both brackets"),
        ("redis://localhost:99999/1", "1 to 65535 (got 99999)"),
        ("redis://localhost:0/1", "1 to 65535 (got 0)"),
        (f"redis://:{SECRET}@localhost:6379/abc", '"abc" is not a database number'),
        (f"redis://:{SECRET}@localhost:6379/1/2", "not a database number"),
        ("redis://localhost:6379/99999999999", "not a database number"),
        ("redis://localhost:6379/1?db=x", "'db' after '?'"),
        ("redis://localhost:6379/1?db=2", "two databases"),
        (f"redis://:{SECRET}@localhost:6379/1?foo=bar", 'unknown option "foo"'),
        (f"redis://:{SECRET}@localhost:6379/1\n", "white space"),
        ("redis://", "names no host"),
        ("redis:///1", "names no host"),
        ("unix://", "socket's path"),
        (f"http://:{SECRET}@localhost", "must start with redis://"),
    ],
)
def test_bad_url_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch, url: str, advice: str) -> None:
    for source in ("env", "flag"):
        if source == "env":
            monkeypatch.setenv("REDIS_URL", url)
        else:
            monkeypatch.delenv("REDIS_URL", raising=False)
        with pytest.raises(SettingsError) as info:
            load_settings() if source == "env" else load_settings(redis_url=url)
        message = str(info.value)
        assert "REDIS_URL" in message and advice in message, (source, message)
        assert "\n" not in message and SECRET[:4] not in message, (source, message)


@pytest.mark.parametrize(
    "url, shown, kwargs",
    [
        (
            "redis://u:p%23w%2Fd%3F@cache.example:6380/4",
            "redis://u:***@cache.example:6380/4",
            {"host": "cache.example", "port": 6380, "db": 4, "username": "u", "password": "p#w/d?"},
        ),
        ("redis://localhost", "redis://localhost:6379/0", {"host": "localhost", "port": 6379, "db": 0}),
        ("redis://localhost:6379/?db=3", "redis://localhost:6379/3", {"host": "localhost", "port": 6379, "db": 3}),
        (
            "rediss://[::1]:6390/2?socket_timeout=5",
            "rediss://[::1]:6390/2",
            {"host": "::1", "port": 6390, "db": 2, "ssl": True, "socket_timeout": 5.0},
        ),
        (
            "unix:///run/redis.sock?db=5&password=pw",
            "unix:///run/redis.sock?db=5",
            {"unix_socket_path": "/run/redis.sock", "db": 5, "password": "pw"},
        ),
    ],
)
def test_good_urls_parse_once_for_everyone(url: str, shown: str, kwargs: dict) -> None:
    s = load_settings(redis_url=url)
    assert describe_redis(s) == shown
    opts = redis_options(s)
    assert {k: opts[k] for k in kwargs} == kwargs
    assert "connection_class" not in opts


def test_host_settings_are_shown_with_their_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "10.0.0.5")
    monkeypatch.setenv("REDIS_QUEUE_DB", "4")
    monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    s = load_settings()
    assert describe_redis(s) == "redis://10.0.0.5:6379/4"
    monkeypatch.setenv("REDIS_HOST", "redis://10.0.0.5:6379/4")
    with pytest.raises(SettingsError, match="REDIS_HOST: must be a host name"):
        load_settings()


@pytest.mark.parametrize(
    "name, value",
    [
        ("REDIS_CONNECT_TIMEOUT", "inf"),
        ("BULLWAIT_SHUTDOWN_TIMEOUT", "nan"),
        ("REDIS_QUEUE_DB", "99999999999999999999"),
    ],
)
def test_numbers_no_timer_can_hold_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_overrides_keep_which_settings_were_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    s = load_settings(redis_url="redis://localhost:6379/1")
    assert "metrics_port" not in s.model_fields_set and "redis_url" in s.model_fields_set
    monkeypatch.setenv("METRICS_PORT", "9191")
    assert "metrics_port" in load_settings(redis_url="redis://localhost:6379/1").model_fields_set


def test_an_at_sign_in_the_query_or_a_socket_path_is_not_taken_for_a_login() -> None:
    from bullwait.settings import parse_redis_url

    assert parse_redis_url("redis://h:6379/0?password=a@b").password == "a@b"
    assert parse_redis_url("unix:///run/a@b.sock").socket_path == "/run/a@b.sock"
