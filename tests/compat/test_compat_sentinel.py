"""The Node side on Redis Sentinel: node-compat/ reads REDIS_SENTINELS & co. as the Python side
does, and its NestJS producer, Bull Board and bullmq 6 worker follow a failover (ioredis
`sentinels`, `name`, `failoverDetector: true`) on a real master + replica + three sentinels.

Measured numbers (seconds, timers run twice / never) are printed with `-s` and belong in the
report, not in asserts.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers.nodecompat import NODE, NODE_DIR, node_required, run_node, seed_entry, seed_slot, start_board, start_node  # noqa: F401 (fixtures)
from helpers.sentinel import SentinelSet, sentinel_env
from helpers.sentinel_node import NestServer, master, node_timer_baseline

pytestmark = node_required

SECRET = "sentinel-s3cret-pw"
ENTRY_POINTS = [
    "compat/inspect.js",
    "compat/add.js",
    "compat/worker.js",
    "nest/produce.js",
    "board/server.js",
    "legacy/produce4.js",
]


def _fails_with_one_line(env: dict[str, str], script: str, *args: str) -> str:
    proc = run_node(env, script, *args, timeout=60, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (script, proc.returncode, proc.stdout, proc.stderr)
    assert SECRET not in proc.stderr + proc.stdout
    return lines[0]


def _no_redis_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    out = {k: v for k, v in env.items() if not k.startswith("REDIS_")}
    return dict(out, REDIS_PASSWORD=SECRET, REDIS_SENTINEL_PASSWORD=SECRET, **extra)


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_redis_url_with_sentinels_is_one_line_naming_both(env: dict[str, str], script: str) -> None:
    bad = _no_redis_env(env, REDIS_URL=f"redis://:{SECRET}@127.0.0.1:6390/0", REDIS_SENTINELS="127.0.0.1:26379")
    args = {
        "compat/add.js": ["WAITLIST_EXPIRY", "[]"],
        "compat/worker.js": ["WAITLIST_EXPIRY"],
        "nest/produce.js": ["getQueueStats"],
        "legacy/produce4.js": ["pause", '{"queue": "WAITLIST_EXPIRY"}'],
        "board/server.js": [],
    }.get(script, [])
    line = _fails_with_one_line(dict(bad, BULL_BOARD_AUTH="off"), script, *args)
    assert "REDIS_URL" in line and "REDIS_SENTINELS" in line, line


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sentinel-1", "not host:port"),
        ("sentinel-1:26379,", "entry 2 is empty"),
        ("a:26379,,b:26379", "entry 2 is empty"),
        ("s1:port", "the port must be a number"),
        ("s1:0", "from 1 to 65535"),
        ("s1:70000", "from 1 to 65535"),
        ("::1:26379", "IPv6 address in brackets"),
        (f"redis://u:{SECRET}@s1:26379", "is a URL"),
        (f"u:{SECRET}@s1:26379", "is a URL"),
    ],
)
def test_bad_sentinels_setting_is_one_line(env: dict[str, str], value: str, says: str) -> None:
    line = _fails_with_one_line(_no_redis_env(env, REDIS_SENTINELS=value), "compat/inspect.js")
    assert line.startswith("inspect: error: REDIS_SENTINELS: ") and says in line, line


def test_bad_master_name_is_one_line(env: dict[str, str]) -> None:
    line = _fails_with_one_line(
        _no_redis_env(env, REDIS_SENTINELS="s1:26379", REDIS_SENTINEL_MASTER="my master"), "compat/inspect.js"
    )
    assert "REDIS_SENTINEL_MASTER" in line, line


def _options(env: dict[str, str]) -> dict[str, Any]:
    """What lib/config.js hands to ioredis (and so to every Queue, Worker and the board)."""
    script = (
        "const { redisOptions, describeRedis } = require('./lib/config');"
        "const o = redisOptions(); for (const k of ['tls', 'sentinelTLS']) if (o[k]) o[k] = Object.keys(o[k]);"
        "process.stdout.write(JSON.stringify({ o, where: describeRedis(o) }));"
    )
    proc = subprocess.run(
        [NODE or "node", "-e", script], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(proc.stdout)


def test_sentinel_options_for_ioredis(env: dict[str, str], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    base = {k: v for k, v in env.items() if not k.startswith("REDIS_")}
    got = _options(
        dict(
            base,
            REDIS_SENTINELS=" s1:26379, [::1]:26380 ,10.0.0.3:26381",
            REDIS_HOST="ignored",
            REDIS_SENTINEL_USERNAME="sentinel-user",
            REDIS_SENTINEL_PASSWORD=SECRET,
            REDIS_USERNAME="app",
            REDIS_PASSWORD="data-pw",
            REDIS_QUEUE_DB="3",
            REDIS_TLS_CA_FILE=str(ca),
        )
    )
    o = got["o"]
    assert o["sentinels"] == [
        {"host": "s1", "port": 26379},
        {"host": "::1", "port": 26380},
        {"host": "10.0.0.3", "port": 26381},
    ]
    assert (o["name"], o["db"], o["failoverDetector"], o["maxRetriesPerRequest"]) == ("mymaster", 3, True, None)
    assert (o["sentinelUsername"], o["sentinelPassword"]) == ("sentinel-user", SECRET)
    assert (o["username"], o["password"]) == ("app", "data-pw")
    # ioredis encrypts the data nodes in Sentinel mode only with enableTLSForSentinelMode.
    assert o["enableTLSForSentinelMode"] is True and o["tls"] == ["ca"] and o["sentinelTLS"] == ["ca"]
    assert "host" not in o and "port" not in o
    assert got["where"] == "sentinel master mymaster via s1:26379,[::1]:26380,10.0.0.3:26381 db 3 (tls)"
    plain = _options(dict(base, REDIS_SENTINELS="s1:26379", REDIS_SENTINEL_MASTER="queues"))["o"]
    assert plain["name"] == "queues" and plain["db"] == 1
    assert not {"sentinelPassword", "password", "tls", "enableTLSForSentinelMode"} & set(plain)


def test_unreachable_sentinels_are_one_line_per_attempt_in_the_board(env: dict[str, str], start_board: Any) -> None:
    from bullwait.dev.embedded import free_port

    board = start_board(
        extra_env={"REDIS_URL": "", "REDIS_SENTINELS": f"127.0.0.1:{free_port()}", "REDIS_SENTINEL_PASSWORD": SECRET}
    )
    board.proc.wait_for_log("unreachable")
    time.sleep(2.5)
    log = board.proc.log()
    assert "redis sentinel master mymaster via 127.0.0.1:" in log
    assert SECRET not in log and "    at " not in log, log  # no stack trace
    lines = [line for line in log.splitlines() if "unreachable" in line]
    assert all(line.startswith("bull-board: redis sentinel master mymaster") for line in lines), lines


@pytest.fixture(scope="module")
def topo() -> Iterator[SentinelSet]:
    with SentinelSet().start() as started:
        yield started


def _wait(check: Any, what: str, timeout: float = 30) -> tuple[Any, float]:
    """Poll until `check()` is truthy; returns it and the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = check()
        if value:
            return value, time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout}s for {what}")


def _expiry_counts(board: Any) -> dict[str, int]:
    queues = board.get("/api/queues").json()["queues"]
    return next(q for q in queues if q["name"] == "waitlist-expiry")["counts"]


def test_nest_board_and_worker_follow_a_graceful_failover(
    topo: SentinelSet, env: dict[str, str], start_board: Any, tmp_path: Path, prefix: str
) -> None:
    """One running NestJS app, Bull Board and bullmq 6 worker through one `SENTINEL FAILOVER`.

    The worker part is the Node baseline: every timer runs at least once; timers run twice and
    seconds to the first completion on the new master are measured, not asserted.
    """
    senv = sentinel_env(env, topo)
    board = start_board(extra_env={"REDIS_URL": "", "REDIS_SENTINELS": topo.sentinels_setting, "REDIS_QUEUE_DB": "0"})
    assert "redis sentinel master mymaster via 127.0.0.1:" in board.proc.log()
    nest = NestServer(senv, tmp_path / "nest.log")
    measured: list[str] = []
    try:
        first = nest.call(
            "notifyWaitlistCustomer", {"waitlistEntry": seed_entry("w-1"), "slot": seed_slot(), "delayMs": 600_000}
        )
        note = nest.call("sendSlotAvailableNotification", {"waitlistEntry": seed_entry("w-1"), "slot": seed_slot()})
        old = topo.master_port()
        assert (
            master(topo).exists(
                f"{prefix}:waitlist-expiry:{first['jobId']}", f"{prefix}:waitlist-notification:{note['jobId']}"
            )
            == 2
        )
        queues = {q["name"]: q for q in board.get("/api/queues").json()["queues"]}
        assert set(queues) == {"waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"}
        assert queues["waitlist-expiry"]["counts"]["delayed"] == 1

        def nest_and_board_follow() -> None:
            switched = time.monotonic()
            second = nest.call(
                "notifyWaitlistCustomer", {"waitlistEntry": seed_entry("w-2"), "slot": seed_slot(), "delayMs": 600_000}
            )
            nest_s = time.monotonic() - switched
            key = f"{prefix}:waitlist-expiry:{second['jobId']}"
            assert redis.Redis(port=topo.master_port()).exists(key), "the NestJS app did not add on the new master"
            old_node = redis.Redis(port=old, decode_responses=True)
            old_was_master = old_node.info("replication")["role"] == "master"
            _, board_s = _wait(lambda: _expiry_counts(board).get("delayed") == 2, "the board to count the new job")
            # Until Sentinel demotes the old master it is still writable and lacks the new job: a
            # board that counts it answered from the new master.
            if old_was_master:
                assert not old_node.exists(key)
            measured.append(
                f"nest add after the switch {nest_s:.2f}s, board counts it {nest_s + board_s:.2f}s "
                f"after the switch (old master undemoted then: {old_was_master})"
            )

        run = node_timer_baseline(topo, senv, tmp_path, "graceful", after_switch=nest_and_board_follow)
        stats = nest.call("getQueueStats")
        assert next(s for s in stats if s["name"] == "expiry")["delayed"] == 2
    finally:
        nest.close()
    print("\n" + "\n".join([*measured, run.summary()]))
    assert measured, "the checks after the switch did not run"
    assert run.never_run == 0, run.summary()
    assert run.first_done_after_switch_s is not None, "no job completed after the switch: " + run.summary()


def test_node_worker_timers_across_a_crashed_master(topo: SentinelSet, env: dict[str, str], tmp_path: Path) -> None:
    """The Node baseline for a SIGKILLed master (runs after the graceful test on the same topology)."""
    run = node_timer_baseline(topo, sentinel_env(env, topo), tmp_path, "crash")
    print("\n" + run.summary())
    assert run.never_run == 0, run.summary()
    assert run.first_done_after_switch_s is not None, "no job completed after the switch: " + run.summary()
