"""bullwait: Python workers and operations tooling for BullMQ queues shared with NestJS."""

from bullwait.waitlist.catalog import JOB_NAMES, LEGACY_QUEUE_NAMES, QUEUE_NAMES, SPECS, Priority, QueueKey, queue_name
from bullwait.errors import (
    BullwaitError,
    InvalidJobData,
    JobNotFound,
    RedisUnavailable,
    SettingsError,
    UnknownQueue,
)
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, SlotDetails, parse_payload
from bullwait.runtime.dispatch import Context, Registry
from bullwait.waitlist.producer import CancelResult, Producer, expiry_job_id, new_expiry
from bullwait.settings import Settings, load_settings
from bullwait.waitlist.store import RedisWaitlistStore, Transition, WaitlistStore
from bullwait.waitlist.offers import Waitlist

__version__ = "0.1.0"

__all__ = [
    "JOB_NAMES",
    "LEGACY_QUEUE_NAMES",
    "QUEUE_NAMES",
    "SPECS",
    "BullwaitError",
    "CancelResult",
    "Context",
    "ExpiryJob",
    "InvalidJobData",
    "JobNotFound",
    "NotificationJob",
    "PreferenceJob",
    "Priority",
    "Producer",
    "QueueKey",
    "RedisUnavailable",
    "RedisWaitlistStore",
    "Registry",
    "Settings",
    "SettingsError",
    "SlotDetails",
    "Transition",
    "UnknownQueue",
    "Waitlist",
    "WaitlistStore",
    "expiry_job_id",
    "load_settings",
    "new_expiry",
    "parse_payload",
    "queue_name",
]
