"""Built-in processors of the three waitlist jobs.

`builtin_registry()` is what `bullwait worker` runs. Until the waitlist domain lands
(`processors/expiry.py`, `notification.py`, `preferences.py`), each job is validated
against its payload model and logged; invalid data fails the job unrecoverably.
"""

from __future__ import annotations

from typing import Any

from bullwait.catalog import JOB_NAMES, QueueKey
from bullwait.payloads import ExpiryJob, NotificationJob, PreferenceJob, WireModel
from bullwait.processing import Context, Registry


async def validate_and_log(payload: WireModel, ctx: Context) -> dict[str, Any]:
    """Accept a valid job: log its (masked) payload and return what was validated."""
    ctx.log.info("job validated", payload=payload.to_wire())
    return {"validated": True, "job": ctx.job.name}


def builtin_registry() -> Registry:
    registry = Registry()
    registry.register(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"], ExpiryJob, validate_and_log)
    registry.register(
        QueueKey.WAITLIST_NOTIFICATION, JOB_NAMES["SEND_SLOT_AVAILABLE"], NotificationJob, validate_and_log
    )
    registry.register(
        QueueKey.PREFERENCE_CALCULATION, JOB_NAMES["CALCULATE_PREFERENCES"], PreferenceJob, validate_and_log
    )
    return registry
