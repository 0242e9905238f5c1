"""Per-salon rolling-window limit on WhatsApp sends, atomic across worker processes.

At most `WAITLIST_NOTIFICATION_RATE_LIMIT` sends per salon in any window of
`WAITLIST_NOTIFICATION_RATE_WINDOW_MS`. Each salon has one sorted set of the send
times inside the window (`<store prefix>{salon:<salonId>}:sends`); one Lua script trims
it, counts and records, so any number of workers share the limit exactly. A caller that
is refused gets how long until the oldest send leaves the window; the notification
processor moves its job to delayed for that long (no failure, no attempt used).

The global Cloud API limit (`WHATSAPP_MAX_MESSAGES_PER_SECOND`) is BullMQ's own worker
`limiter`, set in `bullwait.runner.worker_options`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS: sends ZSET. ARGV: now, window, limit, member. Returns 0 (recorded) or ms to wait.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now + 1
if wait < 1 then wait = 1 end
return wait
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_in_ms: int = 0


class SalonRateLimiter:
    """`acquire` a send for a salon, or learn how long to wait; `release` gives it back."""

    def __init__(self, client: aioredis.Redis, prefix: str, limit: int, window_ms: int) -> None:
        self.client = client
        self.prefix = prefix
        self.limit = limit
        self.window_ms = window_ms
        self._acquire = client.register_script(_ACQUIRE)

    def key(self, salon_id: str) -> str:
        return f"{self.prefix}{{salon:{salon_id}}}:sends"

    async def acquire(self, salon_id: str, member: str, now_ms: int) -> Decision:
        """Record one send for `salon_id` now if the window has room. `member` must be unique
        per send attempt (it is what `release` removes)."""
        wait = int(await self._acquire(keys=[self.key(salon_id)], args=[now_ms, self.window_ms, self.limit, member]))
        return Decision(True) if wait == 0 else Decision(False, wait)

    async def release(self, salon_id: str, member: str) -> None:
        """Give back a send that did not happen (the API refused it or was unreachable)."""
        await self.client.zrem(self.key(salon_id), member)

    async def in_window(self, salon_id: str, now_ms: int) -> int:
        return int(await self.client.zcount(self.key(salon_id), now_ms - self.window_ms + 1, "+inf"))
