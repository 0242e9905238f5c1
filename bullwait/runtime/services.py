"""What a worker process holds: settings, the producer, the processor registry, metrics,
and the waitlist domain (store, sender, limiter, send records).

`build_services` wires them from settings; processors reach them as `ctx.services`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bullwait.engine.autopipeline import AutoPipeline
from bullwait.engine.connection import cluster_ready, redis_client
from bullwait.engine.durable import Durability
from bullwait.runtime.dispatch import JobObserver, NullObserver, Registry
from bullwait.runtime.plugins import load_registry
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name
from bullwait.waitlist.idempotency import SendRecords
from bullwait.waitlist.offers import Waitlist
from bullwait.waitlist.producer import Producer
from bullwait.waitlist.ratelimit import GlobalSendLimiter, SalonRateLimiter
from bullwait.waitlist.store import RedisWaitlistStore, WaitlistStore
from bullwait.waitlist.whatsapp import MessageSender, build_sender


@dataclass
class Services:
    settings: Settings
    producer: Producer
    registry: Registry
    observer: JobObserver = field(default_factory=NullObserver)
    # --- waitlist domain ---
    store: WaitlistStore | None = None
    waitlist: Waitlist | None = None
    sender: MessageSender | None = None
    rate_limiter: SalonRateLimiter | None = None
    global_limiter: GlobalSendLimiter | None = None
    send_records: SendRecords | None = None
    _redis: Any = None

    async def close(self) -> None:
        if self.send_records is not None:
            await self.send_records.close()  # record writes Redis has not confirmed yet
        await self.producer.close()
        if self.sender is not None:
            await self.sender.close()
        if self.store is not None:
            await self.store.close()
        if self._redis is not None:
            await self._redis.aclose()


def _redis_store(settings: Settings, durability: Durability) -> RedisWaitlistStore:
    """bullwait's own store; its scripts travel on an `AutoPipeline` (one connection, opened
    at the first call). Not on a cluster: the store's keys spread over every shard by salon,
    and a pipeline's connection serves one slot's master."""
    client = redis_client(settings)
    pipeline = None if settings.redis_cluster_nodes else AutoPipeline(client)
    return RedisWaitlistStore(client, settings.bullwait_store_prefix, durability, pipeline)


def job_metrics(settings: Settings) -> JobObserver:
    """The Prometheus `JobObserver` (a no-op one when QUEUE_MONITORING_ENABLED=false)."""
    if not settings.queue_monitoring_enabled:
        return NullObserver()
    from bullwait.monitoring.metrics import JobMetrics

    return JobMetrics(
        queues=[queue_name(k, settings) for k in QueueKey],
        expiry_queue=queue_name(QueueKey.WAITLIST_EXPIRY, settings),
    )


async def build_services(
    settings: Settings,
    registry: Registry | None = None,
    store: WaitlistStore | None = None,
    sender: MessageSender | None = None,
) -> Services:
    """Wire the services. Pass `store` to use your own `WaitlistStore` (see docs/waitlist.md)."""
    producer = Producer(settings)
    client = redis_client(settings)
    durability = Durability.from_settings(settings)
    own_store = store if store is not None else _redis_store(settings, durability)
    # A cluster client reads its slot map before the workers' first burst (engine/connection.py).
    await cluster_ready(client, *([own_store.client] if isinstance(own_store, RedisWaitlistStore) else []))
    return Services(
        settings=settings,
        producer=producer,
        registry=registry or load_registry(settings),
        store=own_store,
        waitlist=Waitlist(own_store, producer, settings),
        sender=sender if sender is not None else build_sender(settings),
        rate_limiter=SalonRateLimiter(
            client,
            settings.bullwait_store_prefix,
            settings.waitlist_notification_rate_limit,
            settings.waitlist_notification_rate_window_ms,
            settings.whatsapp_rate_window_margin_ms,
        ),
        global_limiter=GlobalSendLimiter(
            client,
            settings.bullwait_store_prefix,
            settings.whatsapp_phone_number_id,
            settings.whatsapp_max_messages_per_second,
            settings.whatsapp_rate_window_margin_ms,
        ),
        send_records=SendRecords(client, settings.bullwait_store_prefix, durability),
        observer=job_metrics(settings),
        _redis=client,
    )
