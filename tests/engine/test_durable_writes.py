"""BULLWAIT_WAIT_REPLICAS on a real master + replica (two redis-server processes, the replica
frozen with SIGSTOP to play a replica that is down or lagging).

- N=1, replica healthy: adds (single, bulk), send claims and store transitions return only
  once the replica holds them: frozen, the call waits; thawed, it returns and the replica
  (read directly) has the write.
- N=1, replica down: each raises WriteNotDurable naming the setting, and the notification
  processor sends nothing (the fake WhatsApp API counts requests) until the replica is back;
  its job waits in delayed meanwhile, no attempt used.
- A WAIT that falls short is sent again with the write; a store transition sent again
  reports its own first outcome, not `already-...`.
- N=0: no WAIT, today's behaviour (the frozen replica does not matter).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from bullwait.dev.embedded import RedisServer
from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.engine.connection import redis_client
from bullwait.errors import SettingsError, WriteNotDurable
from bullwait.runtime.runner import run_workers
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings, load_settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob
from bullwait.waitlist.producer import Producer, new_expiry
from bullwait.waitlist.store import RedisWaitlistStore

from helpers.jobdata import SLOT_DETAILS, notification_data
from helpers.reliability import eventually
from helpers.sentinel import NO_SYNC_DELAY

NOW = 1_800_000_000_000
FROZEN_S = 0.4  # how long a replica stays frozen while a call waits for it
# WAIT timeout where a frozen replica must make a write fail: short, yet a live replica on a
# machine busy with parallel tests still acknowledges within it.
DOWN_WAIT_MS = 500


@dataclass
class Pair:
    master: RedisServer
    replica: RedisServer

    def replica_client(self) -> redis.Redis:
        return redis.Redis(port=self.replica.port, decode_responses=True, socket_timeout=10)

    def master_client(self) -> redis.Redis:
        return redis.Redis(port=self.master.port, decode_responses=True, socket_timeout=10)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The replica process stopped (SIGSTOP): connected, but it acknowledges nothing."""
        assert self.replica.process is not None
        os.kill(self.replica.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.replica.process.pid, signal.SIGCONT)

    def waits_sent(self) -> int:
        stats = self.master_client().info("commandstats")
        return int(stats.get("cmdstat_wait", {}).get("calls", 0))


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    master = RedisServer(appendonly=False, extra_args=NO_SYNC_DELAY).start()
    replica = RedisServer(appendonly=False, extra_args=NO_SYNC_DELAY).start()
    topo = Pair(master, replica)
    try:
        topo.replica_client().replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 30
        while topo.replica_client().info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "replica never synced"
            time.sleep(0.05)
        yield topo
    finally:
        replica.cleanup()
        master.cleanup()


def durable(pair: Pair, prefix: str, replicas: int = 1, timeout_ms: int = 10_000) -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:{pair.master.port}/0",
        bullmq_prefix=prefix,
        bullwait_store_prefix=f"{prefix}-store:",
        bullwait_wait_replicas=replicas,
        bullwait_wait_timeout_ms=timeout_ms,
        bullwait_redis_retry_timeout=2,
    )


@pytest.fixture
async def clients(pair: Pair, prefix: str) -> AsyncIterator[Callable[[Settings], Any]]:
    """Producer, store and send records for given settings; all closed afterwards."""
    opened: list[Any] = []

    def make(settings: Settings) -> tuple[Producer, RedisWaitlistStore, SendRecords]:
        from bullwait.engine.durable import Durability

        durability = Durability.from_settings(settings)
        producer = Producer(settings)
        store = RedisWaitlistStore(redis_client(settings), settings.bullwait_store_prefix, durability)
        records = SendRecords(redis_client(settings), settings.bullwait_store_prefix, durability)
        opened.extend([producer, store, records.client])
        return producer, store, records

    yield make
    for thing in opened:
        await (thing.aclose() if hasattr(thing, "aclose") else thing.close())


def _expiry(waitlist_id: str) -> ExpiryJob:
    return new_expiry(waitlist_id, "slot-1", "cust-1", "salon-1", delay_ms=60_000)


# Each write, and how to find it on the replica afterwards.
Op = Callable[[Producer, RedisWaitlistStore, SendRecords, str], Awaitable[Any]]


async def _add(p: Producer, s: RedisWaitlistStore, r: SendRecords, tag: str) -> Any:
    return await p.schedule_expiry(_expiry(f"w-{tag}"))


async def _bulk(p: Producer, s: RedisWaitlistStore, r: SendRecords, tag: str) -> Any:
    return await p.schedule_expiries([_expiry(f"w-{tag}-{i}") for i in range(50)], chunk=20)


async def _claim(p: Producer, s: RedisWaitlistStore, r: SendRecords, tag: str) -> Any:
    claim = await r.claim(r.key("salon-d", f"w-{tag}", "slot-1"), "job-1/tok", NOW, 5000, job_id="job-1")
    assert claim.outcome == "claimed"
    return claim


async def _transition(p: Producer, s: RedisWaitlistStore, r: SendRecords, tag: str) -> Any:
    return await s.join(f"salon-{tag}", f"w-{tag}", "cust-1", "+34600000001", NOW)


OPS: dict[str, Op] = {"add": _add, "bulk-add": _bulk, "claim": _claim, "transition": _transition}


def on_replica(pair: Pair, settings: Settings, op: str, tag: str) -> bool:
    replica = pair.replica_client()
    prefix, store = settings.bullmq_prefix, settings.bullwait_store_prefix
    if op == "add":
        return bool(replica.exists(f"{prefix}:waitlist-expiry:expiry_w-{tag}"))
    if op == "bulk-add":
        keys = [f"{prefix}:waitlist-expiry:expiry_w-{tag}-{i}" for i in range(50)]
        return replica.exists(*keys) == 50
    if op == "claim":
        return replica.hget(f"{store}{{salon:salon-d}}:sent:w-{tag}:slot-1", "state") == "sending"
    return replica.hget(f"{store}{{salon:salon-{tag}}}:entry:w-{tag}", "state") == "waiting"


# --- N=1, healthy replica ------------------------------------------------------------------


@pytest.mark.parametrize("op", list(OPS))
async def test_write_returns_only_once_the_replica_holds_it(pair: Pair, prefix: str, clients: Any, op: str) -> None:
    settings = durable(pair, prefix)
    producer, store, records = clients(settings)
    await OPS[op](producer, store, records, "warm")  # connections and scripts in place
    with pair.frozen():
        call = asyncio.ensure_future(OPS[op](producer, store, records, "t"))
        await asyncio.sleep(FROZEN_S)
        assert not call.done(), f"{op} reported done while the replica could not have it"
    await asyncio.wait_for(call, 30)
    assert on_replica(pair, settings, op, "t"), f"{op} returned but the replica does not hold it"


# --- N=1, replica down -----------------------------------------------------------------------


@pytest.mark.parametrize("op", list(OPS))
async def test_replica_down_raises_naming_the_setting(pair: Pair, prefix: str, clients: Any, op: str) -> None:
    producer, store, records = clients(durable(pair, prefix, timeout_ms=DOWN_WAIT_MS))
    await OPS[op](producer, store, records, "warm")
    before = pair.waits_sent()
    with pair.frozen(), pytest.raises(WriteNotDurable) as caught:
        await OPS[op](producer, store, records, "down")
    message = str(caught.value)
    assert "BULLWAIT_WAIT_REPLICAS=1" in message and "0 of 1 replica" in message, message
    assert pair.waits_sent() - before >= 3, "sent again a bounded number of times before giving up"


async def test_notification_not_sent_on_a_claim_the_replica_did_not_confirm(pair: Pair, prefix: str) -> None:
    with FakeWhatsApp() as api:
        settings = durable(pair, prefix, timeout_ms=DOWN_WAIT_MS).with_overrides(
            whatsapp_api_base_url=api.base_url,
            whatsapp_phone_number_id="1055",
            whatsapp_access_token="test-secret-token-xyz",
            whatsapp_timeout_seconds=2,
        )
        services = await build_services(settings)
        try:
            await _notification_through_a_replica_outage(pair, services, api)
        finally:
            await services.close()


async def _notification_through_a_replica_outage(pair: Pair, services: Services, api: FakeWhatsApp) -> None:
    payload = NotificationJob.model_validate(notification_data("w-outage", salon_id="salon-out"))
    job_id = await services.producer.send_slot_available(payload)
    queue = services.producer.queue(QueueKey.WAITLIST_NOTIFICATION)
    stop = asyncio.Event()
    with pair.frozen():
        worker = asyncio.ensure_future(
            run_workers(
                services.settings,
                services.registry,
                [QueueKey.WAITLIST_NOTIFICATION],
                services=services,
                observer=services.observer,
                stop=stop,
            )
        )
        try:
            # Not a failure of the job: it waits in delayed, no attempt used, until the replica confirms.
            await eventually(lambda: _in_state(queue, job_id, "delayed"), 20, "the job back in delayed")
            job = await queue.getJob(job_id)
            assert api.received() == [], "a message went out on a claim only the master held"
            assert job.attemptsMade == 0 and not job.failedReason, (job.attemptsMade, job.failedReason)
        except BaseException:
            stop.set()
            await worker
            raise
    try:
        # Replica back: the retry claims durably and sends, once.
        job = await eventually(lambda: _job_if(queue, job_id, lambda j: bool(j.returnvalue)), 30, "the retry to send")
        assert job.returnvalue["outcome"] == "sent" and len(api.received()) == 1
    finally:
        stop.set()
        assert await worker == 0


async def _in_state(queue: Any, job_id: str, state: str) -> bool:
    return bool(await queue.getJobState(job_id) == state)


async def _job_if(queue: Any, job_id: str, check: Callable[[Any], bool]) -> Any:
    job = await queue.getJob(job_id)
    return job if job is not None and check(job) else None


# --- a short WAIT is sent again ------------------------------------------------------------


async def test_short_wait_sends_the_write_again_and_reports_its_own_outcome(
    pair: Pair, prefix: str, clients: Any
) -> None:
    producer, store, _records = clients(durable(pair, prefix, timeout_ms=300))
    await _join_two(store)
    await store.free_slot("salon-warm", "slot-w", SLOT_DETAILS, NOW, NOW + 60_000)  # scripts loaded: one WAIT per send
    await producer.schedule_expiry(_expiry("w-warm"))
    before = pair.waits_sent()
    with pair.frozen():
        freeing = asyncio.ensure_future(store.free_slot("salon-r", "slot-r", SLOT_DETAILS, NOW, NOW + 60_000))
        adding = asyncio.ensure_future(producer.schedule_expiry(_expiry("w-retry")))
        await asyncio.sleep(0.5)  # past the first WAIT's 300 ms; the third would end past 0.9 s
        assert not freeing.done() and not adding.done()
    freed, added = await asyncio.wait_for(asyncio.gather(freeing, adding), 30)
    assert pair.waits_sent() - before >= 4, "each write was sent again after a short WAIT"
    assert (freed.outcome, freed.next_id) == ("offered", "a"), "the repeat found its own offer: reported as made"
    assert added == "expiry_w-retry"
    replica = pair.replica_client()
    assert replica.hget(f"{store.prefix}{{salon:salon-r}}:entry:a", "state") == "notified"


async def _join_two(store: RedisWaitlistStore) -> None:
    for i, wid in enumerate(("a", "b")):
        assert (await store.join("salon-r", wid, f"c-{wid}", f"+3460000{i:04d}", NOW + i)).outcome == "waiting"


# --- N=0: unchanged ------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(OPS))
async def test_zero_replicas_sends_no_wait(pair: Pair, prefix: str, clients: Any, op: str) -> None:
    producer, store, records = clients(durable(pair, prefix, replicas=0))
    await OPS[op](producer, store, records, "warm0")
    before = pair.waits_sent()
    with pair.frozen():
        await asyncio.wait_for(OPS[op](producer, store, records, "zero"), 5)
    assert pair.waits_sent() == before


def test_bad_wait_settings_are_one_line_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULLWAIT_WAIT_REPLICAS", "-1")
    with pytest.raises(SettingsError, match="BULLWAIT_WAIT_REPLICAS"):
        load_settings()
    monkeypatch.setenv("BULLWAIT_WAIT_REPLICAS", "1")
    monkeypatch.setenv("BULLWAIT_WAIT_TIMEOUT_MS", "0")
    with pytest.raises(SettingsError, match="BULLWAIT_WAIT_TIMEOUT_MS"):
        load_settings()


# --- the least-privilege user of docs/security.md --------------------------------------------


@pytest.mark.parametrize("op", list(OPS))
async def test_least_privilege_user_may_wait_and_write_the_marker(
    pair: Pair, prefix: str, clients: Any, op: str
) -> None:
    """WAIT is in @connection, which the documented ACL does not grant as a whole; a write
    sent again after a short WAIT also writes its marker key (in the prefix's key pattern)."""
    from bullwait.ops.acl import acl_rules

    username, password = f"bw-{prefix}", f"pw-{prefix}"
    admin = pair.master_client()
    admin.execute_command(
        "ACL", "SETUSER", username, "reset", "on", f">{password}", *acl_rules(prefix, f"{prefix}-store:", db=0).split()
    )
    admin.execute_command("ACL", "LOG", "RESET")
    settings = durable(pair, prefix, timeout_ms=300).with_overrides(redis_username=username, redis_password=password)
    producer, store, records = clients(settings)
    try:
        await OPS[op](producer, store, records, "acl-warm")
        with pair.frozen():
            call = asyncio.ensure_future(OPS[op](producer, store, records, "acl"))
            await asyncio.sleep(0.5)  # one WAIT short at least: the repeat writes the marker
        await asyncio.wait_for(call, 30)
        refused = [entry for entry in admin.execute_command("ACL", "LOG") if username in str(entry)]
        assert refused == [], refused
        assert on_replica(pair, settings, op, "acl")
    finally:
        admin.execute_command("ACL", "DELUSER", username)


# --- a real graceful failover (master, replica, three sentinels) -----------------------------


async def _add_through(producer: Producer, stop: asyncio.Event, confirmed: list[str], refused: list[str]) -> None:
    """One expiry timer every 50 ms until `stop`; ids reported added, and the errors."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            confirmed.append(await producer.schedule_expiry(_expiry(f"f{n}")))
        except Exception as exc:  # WriteNotDurable, READONLY, a lost connection: not confirmed
            refused.append(type(exc).__name__)
        await asyncio.sleep(0.05)


async def test_no_confirmed_add_is_lost_in_a_graceful_failover(prefix: str) -> None:
    """Producers pointed at the master by address (no Sentinel client here: the Sentinel tests
    cover that) keep adding through `SENTINEL FAILOVER`. The old master stays
    writable for a while after the replica is promoted; with N=1 nothing it alone took
    is reported added. The N=0 producer beside it is only measured (printed)."""
    from helpers.sentinel import SentinelSet

    with SentinelSet().start() as topo:
        old = topo.master_port()
        base: dict[str, Any] = dict(
            redis_url=f"redis://127.0.0.1:{old}/0", bullwait_redis_retry_timeout=1, bullwait_wait_timeout_ms=200
        )
        results: dict[int, tuple[list[str], list[str]]] = {0: ([], []), 1: ([], [])}
        stop = asyncio.Event()
        async with (
            Producer(Settings(bullmq_prefix=f"{prefix}n1", bullwait_wait_replicas=1, **base)) as durable_p,
            Producer(Settings(bullmq_prefix=f"{prefix}n0", **base)) as plain_p,
        ):
            pairs = ((1, durable_p), (0, plain_p))
            loops = [asyncio.ensure_future(_add_through(p, stop, *results[n])) for n, p in pairs]
            await asyncio.sleep(1.0)
            new = await asyncio.to_thread(topo.failover)
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*loops)
        survivor = redis.Redis(port=new, decode_responses=True)
        lost = {
            n: [i for i in ok if not survivor.exists(f"{prefix}n{n}:waitlist-expiry:{i}")]
            for n, (ok, _) in results.items()
        }
        print(
            f"\nfailover {old}->{new}: N=1 confirmed {len(results[1][0])} lost {len(lost[1])} "
            f"refused {len(results[1][1])}; N=0 confirmed {len(results[0][0])} lost {len(lost[0])} "
            f"refused {len(results[0][1])}"
        )
        assert results[1][0], "the durable producer added nothing before the failover"
        assert lost[1] == [], f"adds reported done but missing on the new master: {lost[1]}"


async def test_two_replicas_every_replica_confirms_through_a_graceful_failover(prefix: str) -> None:
    """Two replicas: only a write both hold survives whichever the sentinels promote (with N=1
    the one that confirmed may be the one resynced away). Producers through the sentinels,
    N=2 (the documented setting: the number of replicas) and N=1 beside it, measured only.
    After the switch the new master has one replica until the demoted master rejoins, so
    N=2 adds are refused meanwhile (WriteNotDurable), never confirmed and lost."""
    from helpers.sentinel import SentinelSet

    with SentinelSet(replicas=2).start() as topo:
        base: dict[str, Any] = dict(
            redis_sentinels=topo.sentinels_setting,
            redis_queue_db=0,
            bullwait_redis_retry_timeout=1,
            bullwait_wait_timeout_ms=200,
        )
        results: dict[int, tuple[list[str], list[str]]] = {2: ([], []), 1: ([], [])}
        stop = asyncio.Event()
        async with (
            Producer(Settings(bullmq_prefix=f"{prefix}n2", bullwait_wait_replicas=2, **base)) as every,
            Producer(Settings(bullmq_prefix=f"{prefix}n1", bullwait_wait_replicas=1, **base)) as one,
        ):
            loops = [asyncio.ensure_future(_add_through(p, stop, *results[n])) for n, p in ((2, every), (1, one))]
            await asyncio.sleep(1.0)
            new = await asyncio.to_thread(topo.failover)
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*loops)
        survivor = redis.Redis(port=new, decode_responses=True)
        lost = {
            n: [i for i in ok if not survivor.exists(f"{prefix}n{n}:waitlist-expiry:{i}")]
            for n, (ok, _) in results.items()
        }
        print(
            f"\ntwo replicas, failover to {new}: "
            + "; ".join(
                f"N={n} confirmed {len(ok)} lost {len(lost[n])} refused {len(refused)}"
                for n, (ok, refused) in results.items()
            )
        )
        assert results[2][0], "the N=2 producer added nothing before the failover"
        assert lost[2] == [], f"adds both replicas confirmed, missing on the new master: {lost[2]}"
