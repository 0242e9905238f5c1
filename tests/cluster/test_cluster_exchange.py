"""Bulk adds and durable writes meet a slot migration with one policy (bullwait.engine.exchange):
ASK is followed to the importing master (ASKING, then the write), TRYAGAIN is waited out,
backing off, and MOVED sends the write to the new owner. Each test holds a slot half moved
until the node it names has refused the write, then finishes the move: the write lands
once, on the new owner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager

from bullmq import Queue

from bullwait.engine.bulk import NewJob, add_jobs, now_ms, stored_opts
from bullwait.engine.connection import bullmq_connection, redis_client
from bullwait.engine.durable import Durability, run_script
from bullwait.engine.internals import scripts_of
from bullwait.settings import Settings

from helpers.cluster import ClusterSet
from helpers.reliability import eventually

# Two keys of one slot: Redis refuses such a script (TRYAGAIN) while one has moved and the other not.
BOTH = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1"
# A key of the same slot written without being declared: refused while it is not on the owner.
UNDECLARED = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[1] .. ':undeclared', ARGV[1]); return 1"


def refusals(cluster: ClusterSet, port: int, error: str) -> int:
    """How many `error` replies (ASK, TRYAGAIN) the node has sent."""
    stats = cluster.client(port).info("errorstats")
    return int(stats.get(f"errorstat_{error}", {}).get("count", 0))


@contextmanager
def migrating(cluster: ClusterSet, slot: int) -> Iterator[tuple[int, int]]:
    """`slot` marked as moving from its owner to another master; (source, target). On exit the
    keys still on the source move too and every master names the target."""
    source = cluster.slot_owner(slot)
    target = next(port for port in cluster.masters() if port != source)
    ids = {port: cluster.command(port, "CLUSTER", "MYID") for port in (source, target)}
    cluster.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    try:
        yield source, target
    finally:
        while keys := cluster.command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            cluster.command(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *keys)
        for port in [target, source, *(p for p in cluster.masters() if p not in (source, target))]:
            cluster.command(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        cluster.wait_ok()


async def test_bulk_add_follows_ask_waits_out_tryagain_and_lands_on_the_new_owner(
    cluster: ClusterSet, csettings: Settings
) -> None:
    queue = Queue("exchange-bulk", {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix})
    wait_key = scripts_of(queue).key("wait")
    jobs = [NewJob("j", json.dumps({"i": i}), stored_opts({}), f"m-{i}", now_ms()) for i in range(20)]
    try:
        with migrating(cluster, cluster.slot(wait_key)) as (source, target):
            asked, again = refusals(cluster, source, "ASK"), refusals(cluster, target, "TRYAGAIN")
            # The queue has no key yet: the owner answers ASK; the importing master, which has
            # none of the add's keys either, TRYAGAIN.
            adding = asyncio.ensure_future(add_jobs(queue, jobs))
            await eventually(lambda: refusals(cluster, target, "TRYAGAIN") > again, 10, "TRYAGAIN after ASKING")
            assert refusals(cluster, source, "ASK") > asked
            assert not adding.done(), "the add waits for the migration"
        ids = await asyncio.wait_for(adding, 30)
        assert ids == [job.id for job in jobs]
        assert cluster.client(target).llen(wait_key) == len(jobs), "added once, on the new owner"
    finally:
        await queue.close()


async def test_durable_write_waits_out_a_split_slot(cluster: ClusterSet, csettings: Settings, prefix: str) -> None:
    client = redis_client(csettings)
    script = client.register_script(BOTH)
    keys = [f"{{{prefix}-split}}:a", f"{{{prefix}-split}}:b"]
    try:
        await client.set(keys[0], "old")  # on the owner; `b` does not exist anywhere
        with migrating(cluster, cluster.slot(keys[0])) as (source, target):
            again = refusals(cluster, source, "TRYAGAIN")
            write = asyncio.ensure_future(
                run_script(client, Durability(replicas=1, timeout_ms=2000), script, keys, ["new"], "split write")
            )
            await eventually(lambda: refusals(cluster, source, "TRYAGAIN") > again, 10, "TRYAGAIN on the owner")
            await asyncio.sleep(1.0)  # longer than the few sends the durable writes used to give a migration
            assert not write.done(), "the write waits for the migration"
        assert await asyncio.wait_for(write, 30) == 1
        assert [cluster.client(target).get(key) for key in keys] == ["new", "new"]
    finally:
        await client.aclose()


async def test_durable_script_refused_half_way_by_a_migrating_slot_is_sent_again(
    cluster: ClusterSet, csettings: Settings, prefix: str
) -> None:
    """A script that writes a key it did not declare (as bullmq's scripts do): while the slot
    migrates and that key is not on the owner, Redis refuses the script there. The durable
    write meets it as TRYAGAIN and lands once the move is over."""
    client = redis_client(csettings)
    script = client.register_script(UNDECLARED)
    key = f"{{{prefix}-mid}}:a"
    try:
        await client.set(key, "old")  # the declared key is on the owner
        with migrating(cluster, cluster.slot(key)) as (_source, target):
            write = asyncio.ensure_future(
                run_script(client, Durability(replicas=1, timeout_ms=2000), script, [key], ["new"], "mid write")
            )
            await asyncio.sleep(1.0)  # refused and sent again meanwhile
            assert not write.done(), "the write waits for the migration"
        assert await asyncio.wait_for(write, 30) == 1
        assert [cluster.client(target).get(k) for k in (key, key + ":undeclared")] == ["new", "new"]
    finally:
        await client.aclose()


async def test_bulk_add_refused_half_way_by_a_migrating_slot_is_sent_again(
    cluster: ClusterSet, csettings: Settings
) -> None:
    """bullmq's add scripts read the job's hash (EXISTS) without declaring it. With every
    declared key on the migrating owner, EXEC runs and Redis refuses each script at that
    key ("Script attempted to access a non local key"): the chunk is sent again until the
    move is over, and every timer lands once, scheduled, on the new owner."""
    queue = Queue("exchange-mid", {"connection": bullmq_connection(csettings), "prefix": csettings.bullmq_prefix})
    scripts = scripts_of(queue)
    delayed = {"delay": 3_600_000}

    def timers(first: int, count: int) -> list[NewJob]:
        opts = stored_opts(delayed)
        return [NewJob("t", json.dumps({"i": i}), opts, f"d-{i}", now_ms()) for i in range(first, count)]

    try:
        await add_jobs(queue, timers(0, 1))  # the add's keys: id, meta, delayed, events, marker
        owner = cluster.client(cluster.slot_owner(cluster.slot(scripts.key("wait"))))
        owner.zadd(scripts.key("completed"), {"done-before": 1})  # the last of them
        with migrating(cluster, cluster.slot(scripts.key("wait"))):
            adding = asyncio.ensure_future(add_jobs(queue, timers(1, 11)))
            await asyncio.sleep(1.0)  # refused and sent again meanwhile
            assert not adding.done(), "the add waits for the migration"
        ids = await asyncio.wait_for(adding, 30)
        assert ids == [f"d-{i}" for i in range(1, 11)]
        target = cluster.client(cluster.slot_owner(cluster.slot(scripts.key("wait"))))
        assert target.zcard(scripts.key("delayed")) == 11, "every timer scheduled, once"
        assert all(target.exists(scripts.to_key(f"d-{i}")) for i in range(11))
    finally:
        await queue.close()
