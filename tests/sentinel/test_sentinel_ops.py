"""The CLI and the producer on Redis Sentinel: `stats`, `doctor` and `cancel` find the
master through the sentinels and show the topology; a producer keeps adding through a failover."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bullwait.errors import RedisUnavailable
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import PreferenceJob
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.jobdata import preference_data
from helpers.sentinel import SentinelSet, sentinel_env, sentinel_settings

QUEUE = "waitlist-preference-calculation"


@pytest.fixture(scope="module")
def topo() -> Iterator[SentinelSet]:
    with SentinelSet().start() as topology:
        yield topology


def job_keys(port: int, prefix: str) -> set[str]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    try:
        return {k.rsplit(":", 1)[1] for k in client.scan_iter(f"{prefix}:{QUEUE}:*") if k.count(":") == 2}
    finally:
        client.close()


def test_stats_doctor_and_cancel_through_the_sentinels(topo: SentinelSet, env: dict[str, str]) -> None:
    senv = sentinel_env(env, topo)
    prefix = senv["BULLMQ_PREFIX"]

    async def add() -> None:
        async with Producer(sentinel_settings(senv)) as producer:
            payload = PreferenceJob.model_validate(preference_data("b-cancel"))
            await producer.add(QueueKey.PREFERENCE_CALCULATION, payload, job_id="to-cancel", delay_ms=600_000)

    asyncio.run(add())
    master = topo.master_port()
    assert "to-cancel" in job_keys(master, prefix)

    stats = invoke_cli(senv, "stats")
    assert stats.returncode == 0, stats.stderr
    assert f"master 127.0.0.1:{master}" in " ".join(stats.stdout.split()), stats.stdout
    assert "sentinels answering 3/3" in " ".join(stats.stdout.split()), stats.stdout
    rows = {row["name"]: row for row in json.loads(invoke_cli(senv, "stats", "--json").stdout)}
    assert rows[QUEUE]["delayed"] == 1

    doctor = invoke_cli(senv, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["sentinels"]["status"] == "ok" and "3/3" in checks["sentinels"]["detail"], doctor.stdout
    assert f"127.0.0.1:{master}" in checks["sentinel master"]["detail"]
    replica = next(n.port for n in topo.nodes if n.port != master)
    assert f"127.0.0.1:{replica} (link ok, lag " in checks["sentinel replica"]["detail"], doctor.stdout

    cancel = invoke_cli(senv, "cancel", "--queue", QUEUE, "--job", "to-cancel")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "to-cancel" not in job_keys(master, prefix)


def test_doctor_says_which_sentinels_do_not_answer(topo: SentinelSet, env: dict[str, str]) -> None:
    senv = sentinel_env(env, topo)
    senv["REDIS_SENTINEL_MASTER"] = "no-such-master"
    doctor = invoke_cli(senv, "doctor")
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert "no reachable master 'no-such-master'" in doctor.stdout and "REDIS_SENTINEL_MASTER" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr
    dead = dict(senv, REDIS_SENTINELS="127.0.0.1:1,127.0.0.1:2", REDIS_SENTINEL_MASTER="mymaster")
    stats = invoke_cli(dead, "stats")
    assert stats.returncode != 0 and len(stats.stderr.strip().splitlines()) == 1, stats.stderr
    assert "no sentinel at sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0 answered" in stats.stderr, stats.stderr


def test_producer_adds_through_a_failover(topo: SentinelSet, env: dict[str, str]) -> None:
    """One add every 50 ms while the sentinels fail over: the producer follows without a restart."""
    senv = sentinel_env(env, topo)
    prefix = senv["BULLMQ_PREFIX"]
    confirmed: list[tuple[float, str]] = []
    refused: list[str] = []
    switched: dict[str, float] = {}

    failures: list[BaseException] = []

    def fail_over() -> None:
        try:
            switched["port"] = topo.failover()
        except BaseException as exc:  # the loop below stops on it instead of adding for ever
            failures.append(exc)
            raise
        switched["at"] = time.monotonic()

    async def produce() -> None:
        async with Producer(sentinel_settings(senv)) as producer:
            thread = None
            i = 0
            while not failures and ("at" not in switched or time.monotonic() - switched["at"] < 3.0):
                payload = PreferenceJob.model_validate(preference_data(f"b-{i}"))
                try:
                    confirmed.append(
                        (
                            time.monotonic(),
                            await producer.add(QueueKey.PREFERENCE_CALCULATION, payload, job_id=f"add-{i}"),
                        )
                    )
                except RedisUnavailable as exc:
                    refused.append(str(exc))
                i += 1
                if i == 20:
                    thread = threading.Thread(target=fail_over)
                    thread.start()
                await asyncio.sleep(0.05)
            assert thread is not None
            thread.join()
            if failures:
                raise failures[0]

    asyncio.run(produce())
    new = switched["port"]
    on_new = job_keys(new, prefix)
    after = [job_id for at, job_id in confirmed if at > switched["at"] + 0.5]
    assert after and set(after) <= on_new, (len(after), sorted(set(after) - on_new)[:5])
    lost = [job_id for _, job_id in confirmed if job_id not in on_new]
    print(
        f"\nproducer: {len(confirmed)} adds confirmed, {len(refused)} refused, "
        f"{len(lost)} confirmed but missing on the new master (no WAIT): {lost[:10]}"
    )
