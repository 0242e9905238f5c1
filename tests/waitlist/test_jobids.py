"""The one job-id rule: lookups accept every id a job can have; new ids also follow Node's custom-id rules."""

from __future__ import annotations

import pytest

from bullwait.waitlist.jobids import BadJobId, check_job_id


@pytest.mark.parametrize("good", ["17", "a:b:c", "expiry_w-1", "with space"])
def test_lookups_accept_ids_bullmq_gives(good: str) -> None:
    assert check_job_id(good) == good


@pytest.mark.parametrize(
    "bad, kind",
    [
        ("17", "integer"),
        ("-3", "integer"),
        ("a:b", "colon"),
        ("", "empty"),
        (" pad", "padded"),
        ("nul\x00", "control"),
        ("x" * 513, "long"),
        ("meta", "queue-key"),
        ("a:b:logs", "job-key"),
    ],
)
def test_new_ids_are_held_to_every_rule(bad: str, kind: str) -> None:
    with pytest.raises(BadJobId) as info:
        check_job_id(bad, new=True)
    assert info.value.kind == kind
    assert "bullwait" not in str(info.value)  # library advice, no CLI command


def test_a_new_id_naming_a_queue_key_says_what_to_do() -> None:
    with pytest.raises(BadJobId, match="names a key BullMQ keeps for the queue itself, not a job; choose another id"):
        check_job_id("events", new=True)
