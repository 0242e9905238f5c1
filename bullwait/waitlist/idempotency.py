"""Send records: one WhatsApp message per (waitlist entry, slot), whoever runs the job.

Before sending, a job *claims* the record (`sending`, with its owner `<job id>/<lock
token>/<run nonce>`, the job id, and a claim deadline of the HTTP timeout plus a margin);
after the Cloud API answers with a message id it records `sent` and the `wamid`. The owner
names one *run* of the job: bullwait's worker keeps one lock token for every job a slot
fetches in a chain, and bullmq-py hands several concurrent fetches the same token, so
`<job id>/<token>` can come back for a later run of the same job; that run would take an
expired claim of the earlier one as its own (`claimed`: another send) and read the earlier
run's release as its own ("already ran"). The nonce is made once per processor run, so
redis-py re-sending the same call (same arguments) still finds its own claim. Outcomes of
`claim`:

- `claimed`: go ahead and send (also the answer to the claim's own owner asking again).
- `sent`: already sent (a retry, a stalled job run again after its send, the same
  notification enqueued twice): return the recorded `wamid`, send nothing.
- `busy`: another run holds a live claim (a duplicate job running right now): wait
  until `claim_until` and look again.
- `unknown`: a claim whose deadline passed and whose owner never said how its send
  ended: the run that made it died mid-request (SIGKILL, OOM, host loss; or lost Redis
  for longer than the claim and then died) and the message may or may not have left.
  bullwait does not send again (no duplicate offers); the job fails visibly instead.
- `ambiguous`: two sends of this record ended without an answer (see below); closed
  until an operator deletes the record.

A send that certainly did not happen (the API answered with an error, or it failed
before the request went out) `release`s the record so a retry may send. A send whose
request left but whose answer never came (a timeout, a reset, an answer cut before its
status line) is *ambiguous*: the API may have taken it. `ambiguous` counts these per
record: the first releases the record so one retry may send again, the second
(`AMBIGUOUS_LIMIT`) closes it, and the job fails saying the message may have arrived.
So an offer is sent at most twice, and twice only after an ambiguous outcome.

Every script is safe to run twice (redis-py sends a command again when its reply was
lost): a claim asked again by its owner answers `claimed`, `mark_sent`, `release` and
`ambiguous` asked again by the same owner answer as the first time and change nothing.

A record write whose reply never came (Redis unreachable for longer than redis-py's
retries) is not dropped: this process keeps it (`_backlog`) and writes it again in the
background until Redis answers, and a later claim of the same record in this process
writes it first. Writes of one record are flushed one at a time (a lock per record: the
background flusher and a claim may both try). While the backlog is not empty it is tried
every `BACKLOG_PAUSE` s (plus jitter), not on a growing back-off: a release or a count that
waits in the backlog makes the job's retry (maybe on another worker) find a `sending` claim
and fail "outcome unknown" once it expires, so it must land as soon as Redis is back.
Every write (`record_sent`, `release`, `ambiguous`, the release of a claim whose reply was
lost) is first retried a few times in process, then left to the backlog: the message
left, the job must not fail for want of a Redis reply. Hence "outcome unknown" means only
what it says above: the claim's owner is gone and nobody can know. At shutdown the backlog
gets one last try, bounded by `CLOSE_FLUSH_S`; what is left is logged.

An expired `sending` claim made by an earlier run of *the same job* is not treated as
released: the claim is the only mark that a request may have left (it is taken before the
request; nothing is written to Redis when the body is written, and such a write could be
lost too), so the earlier run may have died mid-request exactly like another job's run.
The same answer, `unknown`, applies; the prompt release above is what keeps it rare.

The record lives in the salon's hash tag (`<prefix>{salon:<salonId>}:sent:<waitlistId>:<slot>`)
and expires after `RECORD_TTL_MS` (7 days, longer than any retry or retention window).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bullwait.engine.durable import Durability, run_script
from bullwait.errors import WriteNotDurable
from bullwait.logs import get_logger

RECORD_TTL_MS = 7 * 24 * 3600 * 1000
# Ambiguous outcomes a record tolerates: the first allows one more send, this many close it.
AMBIGUOUS_LIMIT = 2
# `record_sent`: tries in process before the backlog takes over, and the pauses between them.
RECORD_SENT_PAUSES = (0.1, 0.5, 1.0)
# The backlog's pause between tries (plus up to as much jitter, so workers do not all
# write at once when Redis comes back); fixed, see the module docstring.
BACKLOG_PAUSE = 0.5
# Longest wait for the backlog at shutdown (with Redis away, each write would otherwise
# wait out redis-py's retries in turn).
CLOSE_FLUSH_S = 5.0

# KEYS: record. ARGV: owner, now, claimUntil, ttl, job id. -> {outcome, detail}
# Deadlines are kept on Redis's clock (TIME), not the workers': with clock skew between
# hosts a live claim must not look dead (that would fail a send as "outcome unknown").
# Only the claim's length (claimUntil - now) is taken from the caller. A claim asked again
# by its own owner (its first reply was lost) is renewed and answered `claimed` again.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'claimUntil', 'wamid', 'ambiguous')
local ambiguous = r[5] or '0'
if r[1] == 'sent' then return {'sent', r[4] or ''} end
if r[1] == 'ambiguous' then return {'ambiguous', ambiguous} end
if r[1] == 'sending' and r[2] ~= ARGV[1] then
  if tonumber(r[3]) > now then return {'busy', r[3]} end
  return {'unknown', r[2] or ''}
end
local hold = tonumber(ARGV[3]) - tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'sending', 'owner', ARGV[1], 'job', ARGV[5],
  'claimedAt', string.format('%.0f', now), 'claimUntil', string.format('%.0f', now + hold))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'claimed', ambiguous}
"""

# KEYS: record. ARGV: owner, wamid, now, ttl. Whoever learns of a send records it (a late
# answer to a claim that was taken over still proves the message left). 1: this owner's
# send is recorded (now or by an earlier run of this call); 0: another send was.
_MARK_SENT = """
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'wamid')
if r[1] == 'sent' then
  if r[2] == ARGV[1] and r[3] == ARGV[2] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'sent', 'wamid', ARGV[2], 'sentAt', ARGV[3], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: record. ARGV: owner, reason, throttled (1/0). Only the claim's owner may release
# it. Returns the number of throttled sends so far (for the back-off), or -1. The same
# owner asking again (a lost reply) gets the same count, not a second increment.
_RELEASE = """
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'releasedBy')
if r[1] == 'sending' and r[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'released', 'owner', '', 'claimUntil', '0', 'lastError', ARGV[2],
    'releasedBy', ARGV[1])
  if ARGV[3] == '1' then return redis.call('HINCRBY', KEYS[1], 'throttled', 1) end
  return tonumber(redis.call('HGET', KEYS[1], 'throttled') or '0')
end
if r[1] == 'released' and r[3] == ARGV[1] then
  return tonumber(redis.call('HGET', KEYS[1], 'throttled') or '0')
end
return -1
"""

# KEYS: record. ARGV: owner, reason, limit. The owner's request left and no answer came:
# count it; below `limit` the record is released (one more send may go), at `limit` it is
# closed (`ambiguous`). Returns the count, or -1 if `owner` held no claim.
_AMBIGUOUS = """
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'releasedBy', 'ambiguous')
if r[1] == 'sending' and r[2] == ARGV[1] then
  local n = redis.call('HINCRBY', KEYS[1], 'ambiguous', 1)
  local state = 'released'
  if n >= tonumber(ARGV[3]) then state = 'ambiguous' end
  redis.call('HSET', KEYS[1], 'state', state, 'owner', '', 'claimUntil', '0', 'lastError', ARGV[2],
    'releasedBy', ARGV[1])
  return n
end
if (r[1] == 'released' or r[1] == 'ambiguous') and r[3] == ARGV[1] then return tonumber(r[4] or '0') end
return -1
"""


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | sent | busy | unknown | ambiguous
    wamid: str | None = None
    claim_until_ms: int | None = None
    owner: str | None = None
    ambiguous: int = 0  # ambiguous outcomes of earlier sends of this record


Write = Callable[[], Awaitable[Any]]


class SendRecords:
    def __init__(self, client: aioredis.Redis, prefix: str, durability: Durability | None = None) -> None:
        self.client = client
        self.prefix = prefix
        # BULLWAIT_WAIT_REPLICAS: a claim counts only once replicas hold it (see `claim`).
        self.durability = durability or Durability()
        self._claim = client.register_script(_CLAIM)
        self._sent = client.register_script(_MARK_SENT)
        self._release = client.register_script(_RELEASE)
        self._ambiguous = client.register_script(_AMBIGUOUS)
        # Writes Redis never confirmed, per record, in order; and sends known only here.
        self._backlog: dict[str, list[Write]] = {}
        self._unrecorded: dict[str, str] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # per record: its flush lock, its users
        self._flusher: asyncio.Task[None] | None = None
        self.log = get_logger(component="send-records")

    def key(self, salon_id: str, waitlist_id: str, slot: str) -> str:
        return f"{self.prefix}{{salon:{salon_id}}}:sent:{waitlist_id}:{slot}"

    async def claim(self, key: str, owner: str, now_ms: int, claim_ms: int, job_id: str = "") -> Claim:
        if key in self._backlog and not await self._flush_key(key) and key in self._unrecorded:
            return Claim("sent", wamid=self._unrecorded[key])  # Redis still away; this process knows
        args = [owner, now_ms, now_ms + claim_ms, RECORD_TTL_MS, job_id or owner.split("/")[0]]
        try:
            outcome, detail = await self._write_claim(key, args)
        except (RedisError, WriteNotDurable):
            # The claim may have been written: give it back as soon as Redis answers, or a
            # retry of this job would wait it out and fail "outcome unknown" with nothing sent.
            await self._write_soon(key, lambda: self._release(keys=[key], args=[owner, "claim reply lost", "0"]))
            raise
        if outcome == "sent":
            return Claim("sent", wamid=detail or None)
        if outcome == "busy":
            return Claim("busy", claim_until_ms=int(detail))
        if outcome == "unknown":
            return Claim("unknown", owner=detail or None)
        if outcome == "ambiguous":
            return Claim("ambiguous", ambiguous=int(detail or 0))
        return Claim("claimed", ambiguous=int(detail or 0))

    async def _write_claim(self, key: str, args: list[Any]) -> list[Any]:
        """The claim script; with durability, answered only once WAIT confirms it, so a
        failover can never bring back an unclaimed record for a message that left (the
        send comes after this returns). The owner asking again is answered `claimed`."""
        if not self.durability.enabled:
            return list(await self._claim(keys=[key], args=args))
        return list(
            await run_script(
                self.client,
                self.durability,
                self._claim,
                [key],
                args,
                f"send record {key} not claimed durably; nothing sent",
            )
        )

    async def mark_sent(self, key: str, owner: str, wamid: str, now_ms: int) -> bool:
        return bool(await self._sent(keys=[key], args=[owner, wamid, now_ms, RECORD_TTL_MS]))

    async def record_sent(self, key: str, owner: str, wamid: str, now_ms: int) -> bool:
        """`mark_sent` after a send the API accepted; never raises. Retried a few times in
        process; if Redis still does not answer, kept in the backlog (and known to this
        process's claims) until it does. Returns whether Redis confirmed it here."""
        try:
            await self._retried(lambda: self.mark_sent(key, owner, wamid, now_ms))
            return True
        except RedisError as exc:
            self.log.warning(
                "message sent but not recorded yet; retrying in the background",
                record=key,
                wamid=wamid,
                error=str(exc)[:200],
            )
            self._unrecorded[key] = wamid
            self._defer(key, lambda: self.mark_sent(key, owner, wamid, now_ms))
            return False

    async def release(self, key: str, owner: str, reason: str, throttled: bool = False) -> int:
        """Back to claimable; returns how many sends of this record were throttled (or -1
        if `owner` no longer held the claim). Retried in process; a release Redis still did
        not confirm is kept in the backlog (so a retry can claim) and the error raised."""
        write = lambda: self._release(keys=[key], args=[owner, reason[:300], "1" if throttled else "0"])  # noqa: E731
        return int(await self._write_or_defer(key, write))

    async def ambiguous(self, key: str, owner: str, reason: str) -> int:
        """Count an ambiguous outcome of `owner`'s send; returns the record's count (1: one
        more send may go; `AMBIGUOUS_LIMIT`: closed), or -1 if `owner` held no claim."""
        write = lambda: self._ambiguous(keys=[key], args=[owner, reason[:300], AMBIGUOUS_LIMIT])  # noqa: E731
        return int(await self._write_or_defer(key, write))

    async def get(self, key: str) -> dict[str, str]:
        # redis-py types replies as bytes | str; the client decodes them (decode_responses=True).
        return cast(dict[str, str], await self.client.hgetall(key))

    # --- writes Redis did not confirm ---

    @property
    def backlog(self) -> int:
        return sum(len(writes) for writes in self._backlog.values())

    async def _retried(self, write: Write) -> Any:
        """`write`, tried again after each of `RECORD_SENT_PAUSES`; the last RedisError raised."""
        for pause in (*RECORD_SENT_PAUSES, None):
            try:
                return await write()
            except RedisError:
                if pause is None:
                    raise
                await asyncio.sleep(pause)

    async def _write_or_defer(self, key: str, write: Write) -> Any:
        """`write` retried in process; if Redis still does not answer, kept in the backlog
        and the error raised."""
        try:
            return await self._retried(write)
        except RedisError:
            self._defer(key, write)
            raise

    async def _write_soon(self, key: str, write: Write) -> None:
        """`_write_or_defer` for a caller that raises its own error anyway."""
        with contextlib.suppress(RedisError):
            await self._write_or_defer(key, write)

    def _defer(self, key: str, write: Write) -> None:
        self._backlog.setdefault(key, []).append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_forever())

    async def _flush_key(self, key: str) -> bool:
        """Write `key`'s backlog in order; True once it is empty. One flush per key at a
        time: two would run the same write twice and then pop a write nobody ran."""
        async with self._one_flush(key):
            writes = self._backlog.get(key, [])
            while writes:
                try:
                    await writes[0]()
                except RedisError:
                    return False
                except Exception as exc:  # noqa: BLE001 - not Redis away: trying again cannot help
                    self.log.error(
                        "send record write failed; dropped, check the record by hand", record=key, error=repr(exc)[:200]
                    )
                writes.pop(0)
            self._backlog.pop(key, None)
            self._unrecorded.pop(key, None)
            return True

    @contextlib.asynccontextmanager
    async def _one_flush(self, key: str) -> AsyncIterator[None]:
        """Hold `key`'s flush lock; the lock is dropped with its last user (no lock per
        record ever seen kept for the life of the process)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _flush_forever(self) -> None:
        while self._backlog:
            await asyncio.sleep(BACKLOG_PAUSE + random.uniform(0, BACKLOG_PAUSE))
            for key in list(self._backlog):
                try:
                    await self._flush_key(key)
                except Exception as exc:  # noqa: BLE001 - one bad write must not end the flusher
                    self.log.error("send record backlog flush failed", record=key, error=repr(exc)[:200])

    async def close(self) -> None:
        """One last try at the backlog, at most `CLOSE_FLUSH_S`; what is left is logged
        (the records to fix by hand)."""
        if self._flusher is not None:
            self._flusher.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_all(), CLOSE_FLUSH_S)
        for key, writes in list(self._backlog.items()):
            self.log.error(
                "send record not written; check it by hand",
                record=key,
                wamid=self._unrecorded.get(key),
                pending=len(writes),
            )

    async def _flush_all(self) -> None:
        for key in list(self._backlog):
            await self._flush_key(key)
