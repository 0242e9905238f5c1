"""What a worker process holds: settings, the producer, the processor registry, metrics.

`build_services` wires them from settings; processors reach them as `ctx.services`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bullwait.catalog import QueueKey, queue_name
from bullwait.processing import JobObserver, NullObserver, Registry
from bullwait.processors import builtin_registry
from bullwait.producer import Producer
from bullwait.settings import Settings


@dataclass
class Services:
    settings: Settings
    producer: Producer
    registry: Registry
    observer: JobObserver = field(default_factory=NullObserver)
    extras: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        await self.producer.close()


def job_metrics(settings: Settings) -> JobObserver:
    """The Prometheus `JobObserver` (a no-op one when QUEUE_MONITORING_ENABLED=false)."""
    if not settings.queue_monitoring_enabled:
        return NullObserver()
    from bullwait.metrics import JobMetrics

    return JobMetrics(
        queues=[queue_name(k, settings) for k in QueueKey],
        expiry_queue=queue_name(QueueKey.WAITLIST_EXPIRY, settings),
    )


async def build_services(settings: Settings, registry: Registry | None = None) -> Services:
    return Services(
        settings=settings,
        producer=Producer(settings),
        registry=registry or builtin_registry(),
        observer=job_metrics(settings),
    )
