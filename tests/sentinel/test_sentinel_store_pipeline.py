"""The waitlist store's auto-pipeline on Redis Sentinel: its connection is the sentinels' master,
and after a failover its calls reach the new master (real master, replica and sentinels)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bullwait.engine.bulk import now_ms
from bullwait.runtime.services import build_services
from bullwait.waitlist.store import RedisWaitlistStore

from helpers.jobdata import SLOT_DETAILS
from helpers.reliability import eventually
from helpers.sentinel import SentinelSet, sentinel_env, sentinel_settings


async def _role(port: int) -> str:
    client = aioredis.Redis(port=port, decode_responses=True)
    try:
        return str((await client.execute_command("ROLE"))[0])
    finally:
        await client.aclose()


async def test_the_store_pipeline_reaches_the_new_master_after_a_failover(env: dict[str, str]) -> None:
    with SentinelSet().start() as topo:
        settings = sentinel_settings(sentinel_env(env, topo)).with_overrides(
            bullwait_store_prefix=env["BULLWAIT_STORE_PREFIX"]
        )
        services = await build_services(settings)
        store = services.store
        assert isinstance(store, RedisWaitlistStore) and store.pipeline is not None
        try:
            now = now_ms()
            for i, who in enumerate(("A", "B", "C")):
                assert (await store.join("salon", who, f"cust-{who}", f"+3460000000{i}", now)).outcome == "waiting"
            assert (await store.free_slot("salon", "slot-1", SLOT_DETAILS, now, now + 1)).next_id == "A"
            old = topo.master_port()
            new = await asyncio.to_thread(topo.failover)

            async def demoted() -> bool:  # until then the old master still takes writes
                return await _role(old) == "slave"

            await eventually(demoted, 60, f"the old master :{old} to become a replica")
            calls = store.pipeline.calls
            expired = await store.expire("salon", "A", "slot-1", now + 1, now + 2)
            assert (expired.outcome, expired.next_id) == ("expired", "B")
            # Through the pipeline (written twice when the new master answers NOSCRIPT first).
            assert store.pipeline.calls > calls
            assert (await store.expire("salon", "B", "slot-1", now + 2, now + 3)).next_id == "C"
        finally:
            await services.close()
        on_new = RedisWaitlistStore(aioredis.Redis(port=new, decode_responses=True), env["BULLWAIT_STORE_PREFIX"])
        try:
            c = await on_new.get_entry("salon", "C")
            assert c is not None and (c.state, c.slot_id) == ("notified", "slot-1"), "written on the new master"
        finally:
            await on_new.close()
