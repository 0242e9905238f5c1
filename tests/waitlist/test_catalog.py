from __future__ import annotations

import json

from bullwait.settings import Settings
from bullwait.waitlist.catalog import (
    JOB_NAMES,
    LEGACY_QUEUE_NAMES,
    QUEUE_NAMES,
    SPECS,
    Priority,
    QueueKey,
    catalog_document,
    catalog_json,
    queue_name,
    resolve_queue,
)

from helpers.cli import invoke_cli
from helpers.common import ROOT

# The NestJS module's "Queue Configuration" table.
NESTJS_MODULE = {
    # queue: (concurrency, backoff ms, completed (count, age s), failed (count, age s))
    QueueKey.WAITLIST_EXPIRY: (5, 1000, (100, 3600), (1000, 7 * 86400)),
    # Concurrency 20, not the NestJS module's 10: 10 cannot reach 80 msg/s at 150 ms (docs/waitlist.md, Rate limits).
    QueueKey.WAITLIST_NOTIFICATION: (20, 1000, (200, 86400), (2000, 7 * 86400)),
    QueueKey.PREFERENCE_CALCULATION: (2, 5000, (50, 3600), (500, 7 * 86400)),
}


def test_names() -> None:
    assert list(QUEUE_NAMES.values()) == ["waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"]
    assert list(LEGACY_QUEUE_NAMES.values()) == [
        "waitlist:expiry",
        "waitlist:notification",
        "waitlist:preference-calculation",
    ]
    assert all(":" not in n for n in QUEUE_NAMES.values())
    assert JOB_NAMES == {
        "CHECK_EXPIRY": "check-expiry",
        "SEND_SLOT_AVAILABLE": "send-slot-available",
        "CALCULATE_PREFERENCES": "calculate-preferences",
    }


def test_queue_keys_hash_as_enum_members_do() -> None:
    """QueueKey takes str's hash for speed; Enum's is the hash of the name: the same while
    every name equals its value."""
    for key in QueueKey:
        assert key.name == key.value and hash(key) == hash(key.name)
        assert {key: 1}[QueueKey[key.name]] == 1 and {key.value: 1}[key] == 1


def test_specs_equal_the_nestjs_module_table_but_notification_concurrency() -> None:
    for key, (conc, backoff, completed, failed) in NESTJS_MODULE.items():
        spec = SPECS[key]
        opts = spec.default_job_options()
        assert spec.default_concurrency == conc
        assert opts["attempts"] == 3
        assert opts["backoff"] == {"type": "exponential", "delay": backoff}
        assert opts["removeOnComplete"] == {"count": completed[0], "age": completed[1]}
        assert opts["removeOnFail"] == {"count": failed[0], "age": failed[1]}


def test_priority_maps_to_bullmq_order() -> None:
    # BullMQ runs un-prioritized jobs first, then 1, 2, ...
    assert Priority.HIGH.bullmq_priority == 0
    assert 0 < Priority.NORMAL.bullmq_priority < Priority.LOW.bullmq_priority


def test_legacy_naming() -> None:
    legacy = Settings(bullwait_queue_names="legacy")
    assert queue_name(QueueKey.WAITLIST_EXPIRY, legacy) == "waitlist:expiry"
    assert resolve_queue("waitlist:expiry", legacy) is QueueKey.WAITLIST_EXPIRY
    assert resolve_queue("expiry", Settings()) is QueueKey.WAITLIST_EXPIRY


def test_tagged_naming_is_the_current_names_each_in_its_hash_tag() -> None:
    tagged = Settings(bullwait_queue_names="tagged")
    assert [queue_name(k, tagged) for k in QueueKey] == ["{" + queue_name(k, Settings()) + "}" for k in QueueKey]
    assert resolve_queue("{waitlist-expiry}", Settings()) is QueueKey.WAITLIST_EXPIRY
    assert resolve_queue("notification", tagged) is QueueKey.WAITLIST_NOTIFICATION
    doc = catalog_document(tagged)
    assert doc["active"]["queueNames"] == doc["taggedQueueNames"]
    assert [q["taggedName"] for q in doc["queues"]] == list(doc["taggedQueueNames"].values())


def test_cli_json_matches_library_and_checked_in_copy(env: dict[str, str]) -> None:
    result = invoke_cli(env, "catalog", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(catalog_json())
    checked_in = ROOT / "node-compat" / "catalog.json"
    assert json.loads(checked_in.read_text()) == json.loads(result.stdout), (
        "node-compat/catalog.json is stale: run `bullwait catalog --json > node-compat/catalog.json`"
    )
