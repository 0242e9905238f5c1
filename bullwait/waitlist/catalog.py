"""The single source of truth for queue names, job names and per-queue defaults.

The Node side reads the JSON that `bullwait catalog --json` prints (checked in as
`node-compat/catalog.json` and verified by a test); nobody keeps a copy by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bullwait.errors import UnknownQueue
from bullwait.settings import QueueNaming, Settings

HOUR = 3600
DAY = 24 * HOUR


def _default(setting: str) -> Any:
    """A setting's default value, so the catalog shows the one Settings uses."""
    return Settings.model_fields[setting].default


class QueueKey(str, Enum):
    """Stable identity of each queue, whatever its Redis name."""

    WAITLIST_EXPIRY = "WAITLIST_EXPIRY"
    WAITLIST_NOTIFICATION = "WAITLIST_NOTIFICATION"
    PREFERENCE_CALCULATION = "PREFERENCE_CALCULATION"

    # Enum's own hash is a Python method (hash of the member's name), paid by every dict
    # lookup such as the worker's per-job registry lookup; each name equals its value, so
    # the string's built-in hash gives the same numbers.
    __hash__ = str.__hash__


QUEUE_NAMES: dict[QueueKey, str] = {
    QueueKey.WAITLIST_EXPIRY: "waitlist-expiry",
    QueueKey.WAITLIST_NOTIFICATION: "waitlist-notification",
    QueueKey.PREFERENCE_CALCULATION: "waitlist-preference-calculation",
}

LEGACY_QUEUE_NAMES: dict[QueueKey, str] = {
    QueueKey.WAITLIST_EXPIRY: "waitlist:expiry",
    QueueKey.WAITLIST_NOTIFICATION: "waitlist:notification",
    QueueKey.PREFERENCE_CALCULATION: "waitlist:preference-calculation",
}

# BULLWAIT_QUEUE_NAMES=tagged: the current names, each its own hash tag. Redis Cluster hashes a
# key by its first `{...}`, so under an untagged prefix (`bull:{waitlist-expiry}:wait`) each
# queue's keys share the slot of its name, and the three queues can sit on three masters.
TAGGED_QUEUE_NAMES: dict[QueueKey, str] = {key: "{" + name + "}" for key, name in QUEUE_NAMES.items()}

NAMES_BY_NAMING: dict[QueueNaming, dict[QueueKey, str]] = {
    QueueNaming.CURRENT: QUEUE_NAMES,
    QueueNaming.LEGACY: LEGACY_QUEUE_NAMES,
    QueueNaming.TAGGED: TAGGED_QUEUE_NAMES,
}

JOB_NAMES: dict[str, str] = {
    "CHECK_EXPIRY": "check-expiry",
    "SEND_SLOT_AVAILABLE": "send-slot-available",
    "CALCULATE_PREFERENCES": "calculate-preferences",
}

EXPIRY_JOB_ID_PREFIX = "expiry_"
EXPIRY_DELAY_MS = round(_default("waitlist_offer_minutes") * 60_000)


class Priority(str, Enum):
    """Intent, mapped onto BullMQ's real order (see `bullmq_priority`).

    BullMQ runs jobs *without* a priority first (the plain wait list), then prioritized
    jobs from 1 (first) upwards. So HIGH is "no priority", NORMAL is 1 and LOW is 10.
    The NestJS module's `priority: 10 // High priority` would have made notifications the last.
    """

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def bullmq_priority(self) -> int:
        return _BULLMQ_PRIORITY[self]


_BULLMQ_PRIORITY = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 10}


@dataclass(frozen=True)
class QueueSpec:
    """The NestJS module's "Queue Configuration" for one queue."""

    key: QueueKey
    job_name: str
    purpose: str
    concurrency_env: str
    attempts: int
    backoff_delay_ms: int
    keep_completed: tuple[int, int]  # (count, age seconds)
    keep_failed: tuple[int, int]
    priority: Priority

    @property
    def default_concurrency(self) -> int:
        """The concurrency setting's default: Settings holds it, the spec only names the setting."""
        return int(_default(self.concurrency_env.lower()))

    def default_job_options(self) -> dict[str, Any]:
        """BullMQ job options a producer writes into each job (Node and Python alike)."""
        opts: dict[str, Any] = {
            "attempts": self.attempts,
            "backoff": {"type": "exponential", "delay": self.backoff_delay_ms},
            "removeOnComplete": {"count": self.keep_completed[0], "age": self.keep_completed[1]},
            "removeOnFail": {"count": self.keep_failed[0], "age": self.keep_failed[1]},
        }
        if self.priority.bullmq_priority:
            opts["priority"] = self.priority.bullmq_priority
        return opts


SPECS: dict[QueueKey, QueueSpec] = {
    QueueKey.WAITLIST_EXPIRY: QueueSpec(
        key=QueueKey.WAITLIST_EXPIRY,
        job_name=JOB_NAMES["CHECK_EXPIRY"],
        purpose="15-minute offer expiry timers",
        concurrency_env="WAITLIST_EXPIRY_CONCURRENCY",
        attempts=3,
        backoff_delay_ms=1000,
        keep_completed=(100, HOUR),
        keep_failed=(1000, 7 * DAY),
        priority=Priority.HIGH,
    ),
    QueueKey.WAITLIST_NOTIFICATION: QueueSpec(
        key=QueueKey.WAITLIST_NOTIFICATION,
        job_name=JOB_NAMES["SEND_SLOT_AVAILABLE"],
        purpose="WhatsApp slot-available notifications",
        concurrency_env="WAITLIST_NOTIFICATION_CONCURRENCY",
        attempts=3,
        backoff_delay_ms=1000,
        keep_completed=(200, DAY),
        keep_failed=(2000, 7 * DAY),
        priority=Priority.HIGH,
    ),
    QueueKey.PREFERENCE_CALCULATION: QueueSpec(
        key=QueueKey.PREFERENCE_CALCULATION,
        job_name=JOB_NAMES["CALCULATE_PREFERENCES"],
        purpose="background preference analytics",
        concurrency_env="PREFERENCE_CALCULATION_CONCURRENCY",
        attempts=3,
        backoff_delay_ms=5000,
        keep_completed=(50, HOUR),
        keep_failed=(500, 7 * DAY),
        priority=Priority.LOW,
    ),
}


def queue_name(key: QueueKey, settings: Settings) -> str:
    """The Redis name of a queue under the configured naming."""
    return NAMES_BY_NAMING[settings.bullwait_queue_names][key]


def concurrency(key: QueueKey, settings: Settings) -> int:
    return int(getattr(settings, SPECS[key].concurrency_env.lower()))


def resolve_queue(name_or_key: str, settings: Settings) -> QueueKey:
    """Accept a queue's Redis name (current or legacy), its key, or a short alias."""
    wanted = name_or_key.strip()
    for key in QueueKey:
        aliases = {
            key.value.lower(),
            QUEUE_NAMES[key],
            LEGACY_QUEUE_NAMES[key],
            TAGGED_QUEUE_NAMES[key],
            QUEUE_NAMES[key].removeprefix("waitlist-"),
            SPECS[key].job_name,
        }
        if wanted.lower() in aliases or wanted == queue_name(key, settings):
            return key
    known = ", ".join(queue_name(k, settings) for k in QueueKey)
    raise UnknownQueue(f"unknown queue {name_or_key!r}; known queues: {known}")


def catalog_document(settings: Settings | None = None) -> dict[str, Any]:
    """The catalog as plain data: what `bullwait catalog --json` prints for Node."""
    queues = []
    for key, spec in SPECS.items():
        queues.append(
            {
                "key": key.value,
                "name": QUEUE_NAMES[key],
                "legacyName": LEGACY_QUEUE_NAMES[key],
                "taggedName": TAGGED_QUEUE_NAMES[key],
                "jobName": spec.job_name,
                "purpose": spec.purpose,
                "concurrency": spec.default_concurrency,
                "concurrencyEnv": spec.concurrency_env,
                "priority": spec.priority.value,
                "defaultJobOptions": spec.default_job_options(),
            }
        )
    doc: dict[str, Any] = {
        "version": 1,
        "prefix": _default("bullmq_prefix"),
        "queueNames": {k.value: v for k, v in QUEUE_NAMES.items()},
        "legacyQueueNames": {k.value: v for k, v in LEGACY_QUEUE_NAMES.items()},
        "taggedQueueNames": {k.value: v for k, v in TAGGED_QUEUE_NAMES.items()},
        "jobNames": dict(JOB_NAMES),
        "expiry": {"jobIdPrefix": EXPIRY_JOB_ID_PREFIX, "delayMs": EXPIRY_DELAY_MS},
        "priorities": {p.value: p.bullmq_priority for p in Priority},
        "queues": queues,
    }
    if settings is not None:
        doc["active"] = {
            "naming": settings.bullwait_queue_names.value,
            "prefix": settings.bullmq_prefix,
            "queueNames": {k.value: queue_name(k, settings) for k in QueueKey},
            "concurrency": {k.value: concurrency(k, settings) for k in QueueKey},
        }
    return doc


def catalog_json(settings: Settings | None = None) -> str:
    return json.dumps(catalog_document(settings), indent=2, sort_keys=False) + "\n"
