"""What a worker process holds: settings, the producer, the processor registry, metrics.

`build_services` wires them from settings; processors reach them as `ctx.services`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bullwait.processing import JobObserver, NullObserver, Registry
from bullwait.plugins import load_registry
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


async def build_services(settings: Settings, registry: Registry | None = None) -> Services:
    return Services(settings=settings, producer=Producer(settings), registry=registry or load_registry(settings))
