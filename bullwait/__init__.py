"""bullwait: Python workers and operations tooling for BullMQ queues shared with NestJS.

The public API is what `__all__` lists, each name described in docs/api.md:

- `Worker`, a drop-in for `bullmq.Worker` on any queue;
- what running the waitlist workers from your own code takes (`load_settings`,
  `build_services`, `run_workers`, `Registry`, ...);
- the waitlist flow (`Waitlist`, `Producer`, the store interface, the payload models);
- the errors worth catching.

Everything else lives in the subpackages and may change without notice.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Imported on first use, so that `import bullwait` (the CLI's first step) loads no engine: the
# engine checks the installed bullmq-py and redis-py when it is imported, and the CLI turns
# a refusal into one line.
_PUBLIC: dict[str, tuple[str, str]] = {
    "Worker": ("bullwait.engine.worker", "BullwaitWorker"),
    "BullwaitError": ("bullwait.errors", "BullwaitError"),
    "InvalidJobData": ("bullwait.errors", "InvalidJobData"),
    "RedisUnavailable": ("bullwait.errors", "RedisUnavailable"),
    "SettingsError": ("bullwait.errors", "SettingsError"),
    "WaitlistError": ("bullwait.errors", "WaitlistError"),
    "configure_logging": ("bullwait.logs", "configure_logging"),
    "Context": ("bullwait.runtime.dispatch", "Context"),
    "Registry": ("bullwait.runtime.dispatch", "Registry"),
    "run_workers": ("bullwait.runtime.runner", "run_workers"),
    "Services": ("bullwait.runtime.services", "Services"),
    "build_services": ("bullwait.runtime.services", "build_services"),
    "Settings": ("bullwait.settings", "Settings"),
    "load_settings": ("bullwait.settings", "load_settings"),
    "Priority": ("bullwait.waitlist.catalog", "Priority"),
    "QueueKey": ("bullwait.waitlist.catalog", "QueueKey"),
    "Waitlist": ("bullwait.waitlist.offers", "Waitlist"),
    "ExpiryJob": ("bullwait.waitlist.payloads", "ExpiryJob"),
    "NotificationJob": ("bullwait.waitlist.payloads", "NotificationJob"),
    "PreferenceJob": ("bullwait.waitlist.payloads", "PreferenceJob"),
    "SlotDetails": ("bullwait.waitlist.payloads", "SlotDetails"),
    "Producer": ("bullwait.waitlist.producer", "Producer"),
    "new_expiry": ("bullwait.waitlist.producer", "new_expiry"),
    "RedisWaitlistStore": ("bullwait.waitlist.store", "RedisWaitlistStore"),
    "Transition": ("bullwait.waitlist.store", "Transition"),
    "WaitlistStore": ("bullwait.waitlist.store", "WaitlistStore"),
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'bullwait' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


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
