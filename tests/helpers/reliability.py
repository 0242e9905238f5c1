"""Helpers shared by the reliability and security tests.

Extending them when the other pieces land:
- WhatsApp sender (idempotent sends): run the fault tests with the real notification
  processor against the loopback fake Cloud API and assert one HTTP send per job id where
  these tests assert one side effect per job id (`reliability_processors.keys`).
- A Node worker taking over stalled jobs: in test_reliability_stalled.py start the Node
  worker instead of the second `bullwait worker`; the counters are plain Redis hashes.
- Metrics, health JSON, Bull Board: add their output to `outputs` in
  test_security_secrets.py so no secret or unmasked phone appears there either.
- Ops commands (`bullwait stats/doctor`): call them on the OOM and unreachable servers
  started here (test_reliability_oom.py, test_worker.py) and assert one-line reasons.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.producer import Producer

from helpers.common import ROOT

# Load the counting test processors into `bullwait worker` (see reliability_processors.py)
# and give a dead worker's jobs back within seconds (the defaults are 30 s each).
COUNTING = {
    "BULLWAIT_PROCESSORS": "helpers.reliability_processors:register",
    "PYTHONPATH": str(ROOT / "tests"),
}
FAST_RECOVERY = {
    **COUNTING,
    "BULLWAIT_LOCK_DURATION_MS": "1500",
    "BULLWAIT_STALLED_INTERVAL_MS": "500",
}


async def eventually(
    check: Callable[[], Any], timeout: float = 30, message: str = "condition", interval: float = 0.05
) -> Any:
    """Call `check` (plain or async) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


async def counts(producer: Producer, key: QueueKey) -> dict[str, int]:
    states = ("waiting", "active", "delayed", "prioritized", "completed", "failed", "paused", "waiting-children")
    return dict(await producer.queue(key).getJobCounts(*states))


async def add_counted(producer: Producer, i: int, sleep_ms: int = 5, bad: bool = False) -> tuple[QueueKey, str]:
    """Add job number `i` (round-robin over the three queues) through the Producer, kept
    after completion (`removeOnComplete: false`) so a test can account for every job.
    `bad=True` writes data that fails validation (a deliberate, unretried failure)."""
    from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, WireModel
    from bullwait.waitlist.producer import expiry_job_id, new_expiry

    from helpers.jobdata import notification_data, preference_data

    kind = i % 3
    payload: WireModel
    if kind == 0:
        key = QueueKey.WAITLIST_NOTIFICATION
        payload = NotificationJob.model_validate(dict(notification_data(f"w-{i}"), sleepMs=sleep_ms))
        opts: dict[str, Any] = {}
    elif kind == 1:
        key = QueueKey.PREFERENCE_CALCULATION
        payload = PreferenceJob.model_validate(dict(preference_data(f"b-{i}"), sleepMs=sleep_ms))
        opts = {}
    else:
        key = QueueKey.WAITLIST_EXPIRY
        payload = ExpiryJob.model_validate(new_expiry(f"w-{i}", "s", "c", "salon-1").to_wire() | {"sleepMs": sleep_ms})
        opts = {"job_id": expiry_job_id(f"w-{i}"), "delay_ms": 50 if i % 2 else 0}
    if bad:
        payload = payload.model_copy(update={"salon_id": ""})  # no validation on copy: invalid on the wire
    job_id = await producer.add(key, payload, removeOnComplete=False, removeOnFail=False, **opts)
    return key, job_id
