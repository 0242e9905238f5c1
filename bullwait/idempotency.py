"""Send records: one WhatsApp message per (waitlist entry, slot), whoever runs the job.

Before sending, a job *claims* the record (`sending`, with its owner and a claim
deadline of the HTTP timeout plus a margin); after the Cloud API answers with a
message id it records `sent` and the `wamid`. Outcomes of `claim`:

- `claimed`: go ahead and send.
- `sent`: already sent (a retry, a stalled job run again after its send, the same
  notification enqueued twice): return the recorded `wamid`, send nothing.
- `busy`: another run holds a live claim (a duplicate job running right now): wait
  until `claim_until` and look again.
- `unknown`: a claim whose deadline passed without `sent`: the run that made it died
  mid-request (SIGKILL, OOM, host loss) and the message may or may not have left.
  bullwait does not send again (no duplicate offers); the job fails visibly instead.

A send that certainly did not happen (the API answered with an error, or it failed
before the request went out) `release`s the record so a retry may send. The record lives in the
salon's hash tag (`<prefix>{salon:<salonId>}:sent:<waitlistId>:<slot>`) and expires
after `RECORD_TTL_MS` (7 days, longer than any retry or retention window).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

RECORD_TTL_MS = 7 * 24 * 3600 * 1000

# KEYS: record. ARGV: owner, now, claimUntil, ttl. -> {outcome, detail}
# Deadlines are kept on Redis's clock (TIME), not the workers': with clock skew between
# hosts a live claim must not look dead (that would fail a send as "outcome unknown").
# Only the claim's length (claimUntil - now) is taken from the caller.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'claimUntil', 'wamid')
if r[1] == 'sent' then return {'sent', r[4] or ''} end
if r[1] == 'sending' then
  if tonumber(r[3]) > now then return {'busy', r[3]} end
  return {'unknown', r[2] or ''}
end
local hold = tonumber(ARGV[3]) - tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'sending', 'owner', ARGV[1],
  'claimedAt', string.format('%.0f', now), 'claimUntil', string.format('%.0f', now + hold))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'claimed', ''}
"""

# KEYS: record. ARGV: owner, wamid, now, ttl. Whoever learns of a send records it (a late
# answer to a claim that was taken over still proves the message left).
_MARK_SENT = """
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'sent' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'sent', 'wamid', ARGV[2], 'sentAt', ARGV[3], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: record. ARGV: owner, reason, throttled (1/0). Only the claim's owner may release
# it. Returns the number of throttled sends so far (for the back-off), or -1.
_RELEASE = """
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'sending' and r[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'released', 'owner', '', 'claimUntil', '0', 'lastError', ARGV[2])
  if ARGV[3] == '1' then return redis.call('HINCRBY', KEYS[1], 'throttled', 1) end
  return tonumber(redis.call('HGET', KEYS[1], 'throttled') or '0')
end
return -1
"""


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | sent | busy | unknown
    wamid: str | None = None
    claim_until_ms: int | None = None
    owner: str | None = None


class SendRecords:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._sent = client.register_script(_MARK_SENT)
        self._release = client.register_script(_RELEASE)

    def key(self, salon_id: str, waitlist_id: str, slot: str) -> str:
        return f"{self.prefix}{{salon:{salon_id}}}:sent:{waitlist_id}:{slot}"

    async def claim(self, key: str, owner: str, now_ms: int, claim_ms: int) -> Claim:
        outcome, detail = await self._claim(keys=[key], args=[owner, now_ms, now_ms + claim_ms, RECORD_TTL_MS])
        if outcome == "sent":
            return Claim("sent", wamid=detail or None)
        if outcome == "busy":
            return Claim("busy", claim_until_ms=int(detail))
        if outcome == "unknown":
            return Claim("unknown", owner=detail or None)
        return Claim("claimed")

    async def mark_sent(self, key: str, owner: str, wamid: str, now_ms: int) -> bool:
        return bool(await self._sent(keys=[key], args=[owner, wamid, now_ms, RECORD_TTL_MS]))

    async def release(self, key: str, owner: str, reason: str, throttled: bool = False) -> int:
        """Back to claimable; returns how many sends of this record were throttled (or -1
        if `owner` no longer held the claim)."""
        return int(await self._release(keys=[key], args=[owner, reason[:300], "1" if throttled else "0"]))

    async def get(self, key: str) -> dict[str, str]:
        return dict(await self.client.hgetall(key))
