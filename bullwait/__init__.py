"""bullwait: Python workers and operations tooling for BullMQ queues shared with NestJS.

The public API is what `__all__` lists, each name described in docs/api.md:

- `Worker`, a drop-in for `bullmq.Worker` on any queue;
- what running the waitlist workers from your own code takes (`load_settings`,
  `build_services`, `run_workers`, `Registry`, ...);
- the waitlist flow (`Waitlist`, `Producer`, the store interface, the payload models);
- the errors worth catching.

Everything else lives in the subpackages and may change without notice.
"""

from bullwait.engine.worker import BullwaitWorker as Worker
from bullwait.errors import BullwaitError, InvalidJobData, RedisUnavailable, SettingsError, WaitlistError
from bullwait.logs import configure_logging
from bullwait.runtime.dispatch import Context, Registry
from bullwait.runtime.runner import run_workers
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings, load_settings
from bullwait.waitlist.catalog import Priority, QueueKey
from bullwait.waitlist.offers import Waitlist
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, SlotDetails
from bullwait.waitlist.producer import Producer, new_expiry
from bullwait.waitlist.store import RedisWaitlistStore, Transition, WaitlistStore

__version__ = "0.1.0"

__all__ = [
    # Any BullMQ queue
    "Worker",
    # Running the waitlist workers
    "Settings",
    "load_settings",
    "configure_logging",
    "build_services",
    "Services",
    "run_workers",
    "Registry",
    "Context",
    "QueueKey",
    "Priority",
    # The waitlist flow
    "Waitlist",
    "Producer",
    "new_expiry",
    "WaitlistStore",
    "RedisWaitlistStore",
    "Transition",
    "ExpiryJob",
    "NotificationJob",
    "PreferenceJob",
    "SlotDetails",
    # Errors
    "BullwaitError",
    "SettingsError",
    "RedisUnavailable",
    "InvalidJobData",
    "WaitlistError",
]
