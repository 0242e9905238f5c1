"""Sentinel settings: REDIS_SENTINELS and friends, and the one-line refusals."""

from __future__ import annotations

import pytest

from bullwait.engine.connection import bullmq_connection, describe_redis, redis_client, redis_options

from helpers.cli import invoke_cli
from helpers.settings import load, refusal


def test_sentinels_master_and_db(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, REDIS_SENTINELS=" 10.0.0.1:26379, sentinel-b:26380,[::1]:26381 ", REDIS_QUEUE_DB="3")
    topology = settings.sentinel
    assert topology is not None
    assert topology.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert topology.master == "mymaster" and topology.db == 3
    assert describe_redis(settings) == "sentinel://10.0.0.1:26379,sentinel-b:26380,[::1]:26381/mymaster/3"
    assert settings.redis_configured
    assert load(monkeypatch, REDIS_SENTINEL_MASTER="queues").sentinel.master == "queues"  # type: ignore[union-attr]


def test_one_node_settings_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, REDIS_URL="redis://localhost:7000/2")
    assert settings.sentinel is None
    assert redis_options(settings)["port"] == 7000
    assert isinstance(bullmq_connection(settings), dict)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", 'entry 1 "10.0.0.1" is not host:port'),
        ("10.0.0.1:", "port must be a number"),
        ("a:26379,b:notaport", 'entry 2 "b:notaport": the port must be a number'),
        ("a:70000", "from 1 to 65535"),
        (",", "entry 1 is empty"),
        ("a:26379,", "entry 2 is empty"),
        ("redis+sentinel://a:26379", "is a URL"),
    ],
)
def test_bad_sentinel_lists_are_one_line(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    message = refusal(monkeypatch, REDIS_SENTINELS=value)
    assert message.startswith("invalid setting REDIS_SENTINELS:") and expected in message, message


def test_credentials_in_the_sentinel_list_are_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, REDIS_SENTINELS="user:s3cret-pw@a:26379")
    assert "REDIS_SENTINEL_PASSWORD" in message and "s3cret-pw" not in message


def test_url_and_sentinels_together_name_both(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, REDIS_URL="redis://:pw-in-url@localhost:6379/1", REDIS_SENTINELS="a:26379")
    assert "REDIS_URL and REDIS_SENTINELS" in message and "pw-in-url" not in message


def test_sentinel_url_points_to_redis_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, REDIS_URL="redis+sentinel://:pw@a:26379/mymaster")
    assert "REDIS_SENTINELS" in message and "pw" not in message.replace("REDIS_SENTINEL", "")


def test_bad_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "REDIS_SENTINEL_MASTER" in refusal(monkeypatch, REDIS_SENTINELS="a:1", REDIS_SENTINEL_MASTER="my master")


async def test_every_client_is_sentinel_managed(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        REDIS_SENTINELS="127.0.0.1:1",
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
        REDIS_PASSWORD="node-secret",
    )
    with pytest.raises(RuntimeError):
        redis_options(settings)  # names one node: no code path may build a plain client by accident
    client = redis_client(settings)
    bullmq = bullmq_connection(settings)
    try:
        for c in (client, bullmq):
            pool = c.connection_pool
            assert type(pool).__name__ == "FollowingPool"
            assert pool.connection_kwargs["password"] == "node-secret"
            assert pool.sentinel_manager.sentinel_kwargs["password"] == "sentinel-secret"
        assert bullmq.single_connection_client and not client.single_connection_client
    finally:
        await client.aclose()
        await bullmq.aclose()
    assert "secret" not in repr(settings) and "secret" not in describe_redis(settings)


def test_cli_refuses_bad_sentinels_in_one_line(env: dict[str, str]) -> None:
    bad = {k: v for k, v in env.items() if k != "REDIS_URL"}
    proc = invoke_cli(dict(bad, REDIS_SENTINELS="a:26379,b"), "stats")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_SENTINELS" in lines[0], proc.stderr
    both = invoke_cli(dict(env, REDIS_SENTINELS="a:26379"), "stats")
    assert both.returncode == 2 and "REDIS_URL and REDIS_SENTINELS" in both.stderr.strip(), both.stderr
    assert len(both.stderr.strip().splitlines()) == 1
