"""Built-in processors of the three waitlist jobs; `builtin_registry()` is what
`bullwait worker` runs.

- `check-expiry` -> `expiry.check_expiry`: expire an offer, pass the slot on (FIFO).
- `send-slot-available` -> `notification.send_slot_available`: one WhatsApp offer,
  idempotent, within the per-salon and global limits.
- `calculate-preferences` -> `preferences.calculate_preferences`: fold a booking once.

They reach the waitlist store, sender and limiter through `ctx.services`
(`bullwait.runtime.services.Services`).
"""

from __future__ import annotations

from bullwait.runtime.dispatch import Registry
from bullwait.runtime.processors.expiry import check_expiry
from bullwait.runtime.processors.notification import send_slot_available
from bullwait.runtime.processors.preferences import calculate_preferences
from bullwait.waitlist.catalog import JOB_NAMES, QueueKey
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob


def builtin_registry() -> Registry:
    registry = Registry()
    registry.register(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"], ExpiryJob, check_expiry)
    registry.register(
        QueueKey.WAITLIST_NOTIFICATION, JOB_NAMES["SEND_SLOT_AVAILABLE"], NotificationJob, send_slot_available
    )
    registry.register(
        QueueKey.PREFERENCE_CALCULATION, JOB_NAMES["CALCULATE_PREFERENCES"], PreferenceJob, calculate_preferences
    )
    return registry
