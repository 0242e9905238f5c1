"""The notification benchmark's processor, and the hook to swap in the real one.

`bench_registry(options)` returns a `Registry` with a `send-slot-available` processor that
 1. applies a per-salon sliding-window limit (`salonLimit` sends in any `salonWindowMs`;
    one sorted set of send times per salon under a `{prefix}` hash tag): over the limit,
    the job is moved back to delayed until a slot frees (`DelayedError`), never sent;
 2. POSTs the Cloud API's template-message shape to `fakeUrl` with httpx.
The global 80/s cap is BullMQ's worker `limiter` ({max: 80, duration: 1000}), set by the
benchmark through `run_workers(options=...)`.

Hook: `python -m bench --notify-processor package.module:function` makes the benchmark
call `function(options) -> Registry` instead (options: redisUrl, prefix, fakeUrl,
salonLimit, salonWindowMs, concurrency). The real processor should read its Cloud API
base URL from what `fakeUrl` gives (e.g. set its settings from it) and must send each
notification's `customerPhone` as `to`: the benchmark checks duplicates and per-salon
counts by recipient.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from bullmq import DelayedError

from bullwait.catalog import JOB_NAMES, QueueKey
from bullwait.payloads import NotificationJob
from bullwait.processing import Context, Registry

# Sliding window: drop sends older than the window; admit if under the limit (record
# this job), else return the ms until the oldest send leaves the window.
WINDOW_HIT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


def bench_registry(o: dict[str, Any]) -> Registry:
    client = httpx.AsyncClient(
        base_url=o["fakeUrl"], timeout=10, limits=httpx.Limits(max_connections=max(20, o["concurrency"] * 2))
    )
    redis = aioredis.from_url(o["redisUrl"], decode_responses=True)
    hit = redis.register_script(WINDOW_HIT)
    limit, window = int(o.get("salonLimit") or 0), int(o.get("salonWindowMs") or 60_000)

    async def send_slot_available(payload: NotificationJob, ctx: Context) -> dict[str, Any]:
        if limit:
            now = int(time.time() * 1000)
            key = f"{{{o['prefix']}}}:salon-window:{payload.salon_id}"
            allowed, wait_ms = await hit(keys=[key], args=[now, window, limit, ctx.job.id])
            if not int(allowed):
                await ctx.job.moveToDelayed(now + max(int(wait_ms), 1) + 5, ctx.token)
                raise DelayedError()
        details = payload.slot_details
        response = await client.post(
            "/v21.0/1234567890/messages",
            json={
                "messaging_product": "whatsapp",
                "to": payload.customer_phone,
                "type": "template",
                "template": {
                    "name": "slot_available",
                    "language": {"code": "es"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": details.service_name},
                                {"type": "text", "text": f"{details.date} {details.time}"},
                            ],
                        }
                    ],
                },
            },
        )
        response.raise_for_status()
        return {"messageId": response.json()["messages"][0]["id"]}

    registry = Registry()
    registry.register(QueueKey.WAITLIST_NOTIFICATION, JOB_NAMES["SEND_SLOT_AVAILABLE"], NotificationJob, send_slot_available)
    return registry
