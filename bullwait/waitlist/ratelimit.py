"""Sliding-window limits on WhatsApp sends, exact across any number of worker processes.

Two windows, one Lua script (`SlidingWindow`), both counted on Redis's clock (`TIME`):

- **Global**: at most `WHATSAPP_MAX_MESSAGES_PER_SECOND` sends of one phone number in
  any 1 s, whatever the start of the second (`GlobalSendLimiter`, key
  `<store prefix>{whatsapp:<phone number id>}:sends`).
- **Per salon**: at most `WAITLIST_NOTIFICATION_RATE_LIMIT` sends per salon in any
  `WAITLIST_NOTIFICATION_RATE_WINDOW_MS` (`SalonRateLimiter`, key
  `<store prefix>{salon:<salonId>}:sends`).

Each window is one sorted set of admission times (microseconds); the script trims it,
counts and records in one step, so concurrent callers never both take the last place.
A place is taken right before the HTTP request; once the request has been written to
the socket its time is moved to then (`stamp`, again Redis TIME), so a request that
waited in the event loop between the two still counts a full window from when it left:
the limit holds on *departures*, exactly, unless a request takes longer than the window
itself to leave. Arrival at the API adds the network's hop, which varies; both windows
are kept `WHATSAPP_RATE_WINDOW_MARGIN_MS` longer than nominal for that, so arrivals
`limit` places apart are a full window apart while the hop varies by less than it.

A refused caller learns how long until the oldest place leaves the window. A send that
did not happen (the API refused it, or was unreachable) `release`s its place.

Each script is safe to run twice (redis-py re-sends a command whose reply was lost): an
`acquire` by a member already holding a place answers "allowed" (not "refused", which
would leave that place taken by nobody for a whole window); `stamp` moves the time to
the later run (never back); `release` is a ZREM.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS: window ZSET. ARGV: window (us), limit, member. Returns 0 (recorded) or ms to wait.
# Scores are Redis TIME in integer microseconds (exact in a Lua double until year 2255).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
-- The member already holds a place: this call is a re-send after a lost reply.
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = math.ceil((tonumber(oldest[2]) + window - now) / 1000)
if wait < 1 then wait = 1 end
return wait
"""


# KEYS: window ZSET. ARGV: window (us), member. Moves the member's time to now (never
# back), after its request has left: a request that left late still counts a full
# window from when it left.
_STAMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000))
return 1
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_in_ms: int = 0


class SlidingWindow:
    """At most `limit` places in any `window_ms + margin_ms` on Redis's clock."""

    def __init__(self, client: aioredis.Redis, limit: int, window_ms: int, margin_ms: int = 0) -> None:
        if limit < 1 or window_ms < 1 or margin_ms < 0:
            raise ValueError(
                "sliding window needs limit >= 1, window_ms >= 1, margin_ms >= 0 "
                f"(got {limit}, {window_ms}, {margin_ms})"
            )
        self.client = client
        self.limit = limit
        self.window_ms = window_ms
        self.margin_ms = margin_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._stamp = client.register_script(_STAMP)

    @property
    def window_us(self) -> int:
        return (self.window_ms + self.margin_ms) * 1000

    async def acquire(self, key: str, member: str) -> Decision:
        """Take a place in `key`'s window now if there is room. `member` must be unique per
        send attempt (it is what `stamp` moves and `release` removes)."""
        wait = int(await self._acquire(keys=[key], args=[self.window_us, self.limit, member]))
        return Decision(True) if wait == 0 else Decision(False, wait)

    async def stamp(self, key: str, member: str) -> None:
        """The request of `member` has left: its place counts from now (Redis's clock)."""
        await self._stamp(keys=[key], args=[self.window_us, member])

    async def release(self, key: str, member: str) -> None:
        """Give back a place whose send did not happen."""
        await self.client.zrem(key, member)

    async def in_window(self, key: str) -> int:
        """Places taken in the window ending now (on Redis's clock)."""
        seconds, micros = await self.client.time()
        now_us = int(seconds) * 1_000_000 + int(micros)
        return int(await self.client.zcount(key, f"({now_us - self.window_us}", "+inf"))


class SalonRateLimiter:
    """`acquire` a send for a salon, or learn how long to wait; `release` gives it back."""

    def __init__(self, client: aioredis.Redis, prefix: str, limit: int, window_ms: int, margin_ms: int = 0) -> None:
        self.prefix = prefix
        self.window = SlidingWindow(client, limit, window_ms, margin_ms)

    def key(self, salon_id: str) -> str:
        return f"{self.prefix}{{salon:{salon_id}}}:sends"

    async def acquire(self, salon_id: str, member: str) -> Decision:
        return await self.window.acquire(self.key(salon_id), member)

    async def stamp(self, salon_id: str, member: str) -> None:
        await self.window.stamp(self.key(salon_id), member)

    async def release(self, salon_id: str, member: str) -> None:
        await self.window.release(self.key(salon_id), member)

    async def in_window(self, salon_id: str) -> int:
        return await self.window.in_window(self.key(salon_id))


GLOBAL_WINDOW_MS = 1000


class GlobalSendLimiter:
    """The Cloud API's throughput: `per_second` sends of one phone number in any 1 s."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, phone_number_id: str | None, per_second: int, margin_ms: int = 0
    ) -> None:
        self.key = f"{prefix}{{whatsapp:{phone_number_id or 'console'}}}:sends"
        self.window = SlidingWindow(client, per_second, GLOBAL_WINDOW_MS, margin_ms)
        self._waiters = asyncio.Lock()

    async def acquire(self, member: str) -> Decision:
        return await self.window.acquire(self.key, member)

    async def acquire_waiting(self, member: str, max_wait_ms: int) -> Decision:
        """Take a place, waiting in-process for one to free; refused only if that would
        take more than `max_wait_ms` (the decision then says how long). The jobs of one
        process wait in line: only the first polls Redis, so a freed place costs one
        script call per process, not one per waiting job."""
        decision = await self.acquire(member)
        if decision.allowed:
            return decision
        deadline = time.monotonic() + max_wait_ms / 1000
        if not await self._join_line(max_wait_ms / 1000):
            return decision  # the line ahead took all the time there was
        try:
            while True:
                decision = await self.acquire(member)
                if decision.allowed:
                    return decision
                if time.monotonic() + decision.retry_in_ms / 1000 > deadline:
                    return decision
                await asyncio.sleep(decision.retry_in_ms / 1000)
        finally:
            self._waiters.release()

    async def _join_line(self, timeout: float) -> bool:
        """Hold the line's lock within `timeout` s; False (not holding it) if not."""
        turn = asyncio.ensure_future(self._waiters.acquire())
        await asyncio.wait([turn], timeout=timeout)
        if turn.done():
            return not turn.cancelled()
        turn.cancel()
        try:
            await turn  # it may have got the lock while being cancelled: then give it back
        except asyncio.CancelledError:
            return False
        self._waiters.release()
        return False

    async def stamp(self, member: str) -> None:
        await self.window.stamp(self.key, member)

    async def release(self, member: str) -> None:
        await self.window.release(self.key, member)

    async def in_window(self) -> int:
        return await self.window.in_window(self.key)
