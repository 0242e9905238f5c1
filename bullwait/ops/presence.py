"""Is this the right Redis db? The catalog's queues, checked by key name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from bullwait.engine.connection import describe_redis, redis_client
from bullwait.settings import Settings
from bullwait.waitlist.catalog import NAMES_BY_NAMING, QueueKey, queue_name

# Keys any queue that has ever held a job (or had a worker) has at least one of. Checked
# by name with EXISTS: never KEYS or SCAN over a keyspace that other applications share.
QUEUE_MARK_KEYS = (
    "meta",
    "id",
    "events",
    "wait",
    "active",
    "delayed",
    "prioritized",
    "completed",
    "failed",
    "paused",
    "waiting-children",
    "stalled-check",
    "marker",
    "repeat",
)


@dataclass
class QueuePresence:
    """Which of the catalog's queues have keys in the configured Redis db."""

    where: str
    prefix: str
    found: list[str]
    other_naming: list[str]  # found under the other BULLWAIT_QUEUE_NAMES
    checked: bool = True  # False: the server refused EXISTS (ACL)

    def warning(self) -> str | None:
        """What to tell the operator when this db looks like the wrong one; None when fine."""
        if not self.checked or self.found:
            return None
        text = (
            f"{self.where} holds none of the catalog's queues under prefix {self.prefix!r}: likely the wrong "
            "db (REDIS_URL's /<db> or REDIS_QUEUE_DB) or BULLMQ_PREFIX; fine for a new deployment"
        )
        if self.other_naming:
            text += f"; it does hold {', '.join(self.other_naming)}: check BULLWAIT_QUEUE_NAMES"
        return text


async def queue_presence(client: Any, settings: Settings) -> QueuePresence:
    """EXISTS of each catalog queue's marks (every naming), in one round trip. One key per
    EXISTS: on a cluster a queue's keys share a slot only under its naming's hash tag."""
    current = [queue_name(k, settings) for k in QueueKey]
    other = [n for names in NAMES_BY_NAMING.values() for n in names.values() if n not in current]
    prefix = settings.bullmq_prefix
    pipe = client.pipeline(transaction=False)
    for name in (*current, *other):
        for suffix in QUEUE_MARK_KEYS:
            pipe.exists(f"{prefix}:{name}:{suffix}")
    try:
        replies = await pipe.execute()
    except ResponseError:
        return QueuePresence(describe_redis(settings), prefix, [], [], checked=False)
    marks = len(QUEUE_MARK_KEYS)
    counts = [sum(int(r) for r in replies[i : i + marks]) for i in range(0, len(replies), marks)]
    found = [n for n, c in zip(current, counts) if int(c)]
    others = [n for n, c in zip(other, counts[len(current) :]) if int(c)]
    return QueuePresence(describe_redis(settings), prefix, found, others)


async def warn_if_wrong_db(settings: Settings, log: Any) -> None:
    """Log a warning when the configured db holds none of the catalog's queues (worker start-up)."""
    client = redis_client(settings, socket_timeout=settings.redis_connect_timeout, retry_on_timeout=False)
    try:
        warning = (await queue_presence(client, settings)).warning()
    except (RedisError, OSError):
        return  # the worker's own connection reports an unreachable Redis
    finally:
        await client.aclose()
    if warning:
        log.warning("no catalog queue in this Redis db", detail=warning)
