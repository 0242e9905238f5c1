"""`bullwait migrate-legacy` without Node: partial runs (as after a crash) and re-runs lose and duplicate nothing."""

from __future__ import annotations

from typing import Any

import pytest

import bullwait.ops.migrate as migrate
from bullwait.settings import QueueNaming, Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.cli import invoke_cli


async def test_a_run_cut_short_then_rerun_moves_every_timer_once(
    settings: Settings, sync_redis, prefix, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    legacy = settings.with_overrides(bullwait_queue_names=QueueNaming.LEGACY)
    async with Producer(legacy) as producer:
        for i in range(300):
            await producer.schedule_expiry(new_expiry(f"w-{i}", "s", "c", "salon", delay_ms=15 * 60_000 + i))
    before = dict(sync_redis.zrange(f"{prefix}:waitlist:expiry:delayed", 0, -1, withscores=True))
    assert len(before) == 300

    real_ids = migrate._ids

    async def first_120(client: Any, prefix_: str, queue: str, state: str) -> list[str]:
        return (await real_ids(client, prefix_, queue, state))[:120]

    monkeypatch.setattr(migrate, "_ids", first_120)  # the process "dies" after 120 jobs
    first = await migrate.migrate_legacy(settings, batch=50)
    monkeypatch.setattr(migrate, "_ids", real_ids)
    second = await migrate.migrate_legacy(settings, batch=50)
    third = await migrate.migrate_legacy(settings)

    assert (first.moved, second.moved, third.moved) == (120, 180, 0)
    after = dict(sync_redis.zrange(f"{prefix}:waitlist-expiry:delayed", 0, -1, withscores=True))
    assert after == before, "every timer moved once, with its exact due time"
    assert sync_redis.zcard(f"{prefix}:waitlist:expiry:delayed") == 0
    async with Producer(settings) as producer:
        assert (await producer.cancel_expiry_timer("w-7")).cancelled


def test_cli_dry_run_on_empty_queues_and_unreachable_redis(env: dict[str, str]) -> None:
    ok = invoke_cli(env, "migrate-legacy", "--dry-run")
    assert ok.returncode == 0 and "would move 0" in ok.stdout
    down = invoke_cli(dict(env, REDIS_URL="redis://127.0.0.1:1/0"), "migrate-legacy")
    assert down.returncode == 3 and "cannot reach Redis" in down.stderr and "Traceback" not in down.stderr
