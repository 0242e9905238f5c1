"""The operator CLI against Node: `bullwait cancel` removes a NestJS timer,
`bullwait stats --json` equals Node's getJobCounts.
"""

from __future__ import annotations

import json

from bullwait.settings import Settings
from bullwait.waitlist.payloads import PreferenceJob
from bullwait.waitlist.producer import Producer

from helpers.cli import invoke_cli
from helpers.jobdata import preference_data
from helpers.nodecompat import nest, node_json, node_required, seed_booking, seed_entry, seed_slot

pytestmark = node_required

COUNTED = ("waiting", "active", "completed", "failed", "delayed", "prioritized")


async def test_cancel_and_stats_agree_with_node(env: dict[str, str], settings: Settings, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    slot = seed_slot()
    nest(
        env,
        "batch",
        [
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": seed_entry("w-ops-1"), "slot": slot}},
            {"action": "notifyWaitlistCustomer", "args": {"waitlistEntry": seed_entry("w-ops-2"), "slot": slot}},
            {"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": seed_entry("w-ops-3"), "slot": slot}},
            {"action": "calculatePreferencesAfterBooking", "args": {"customerId": "c-1", "booking": seed_booking()}},
        ],
    )
    async with Producer(settings) as producer:
        await producer.queue_preferences(PreferenceJob.model_validate(preference_data("b-ops")))

    cancelled = invoke_cli(env, "cancel", "w-ops-1")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert not sync_redis.exists(f"{prefix}:waitlist-expiry:expiry_w-ops-1")
    again = invoke_cli(env, "cancel", "w-ops-1")
    assert again.returncode == 1

    stats = invoke_cli(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    python = {row["name"]: row for row in json.loads(stats.stdout)}
    node = node_json(env, "compat/inspect.js")
    for entry in node.values():
        for state in COUNTED:
            assert python[entry["name"]][state] == entry["counts"][state], (entry["name"], state)
    assert python["waitlist-expiry"]["delayed"] == 1
