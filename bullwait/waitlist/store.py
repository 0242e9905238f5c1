"""Waitlist state: entries, slots and offers, customer preferences.

`WaitlistStore` is the interface the processors and `bullwait.waitlist.offers.Waitlist` use;
`RedisWaitlistStore` (the default) keeps the state in the queues' Redis under its own
prefix (`BULLWAIT_STORE_PREFIX`, default `bullwait:`). An application that keeps its
waitlist in its own database implements the Protocol instead (see docs/waitlist.md).

Entry states::

    waiting --offer--> notified(slotId, expiresAt) --> booked | expired | cancelled
    waiting --cancel--> cancelled

Every transition is one Lua script: a compare-and-set on the entry's state (and the
slot's `offeredTo`), so a retried, duplicated or late job can never move an entry twice,
offer one slot to two customers, or bring a booked entry back. An offer goes to the
salon's first `waiting` entry by join order (FIFO; preferences do not reorder it).

Key layout (one hash tag per salon and per customer, so every script touches a single
Redis Cluster slot)::

    <prefix>{salon:<salonId>}:seq              join counter (FIFO order)
    <prefix>{salon:<salonId>}:waiting          ZSET waitlistId -> join sequence
    <prefix>{salon:<salonId>}:entry:<id>       HASH entry
    <prefix>{salon:<salonId>}:slot:<slotId>    HASH slot (details, state, offeredTo)
    <prefix>{cust:<customerId>}:bookings       HASH bookingId -> booking facts (JSON)
    <prefix>{cust:<customerId>}:prefs          HASH counts (service:<id>, master:<id>, day:<n>, hour:<n>)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import redis.asyncio as aioredis

from bullwait.engine.autopipeline import AutoPipeline
from bullwait.engine.durable import Durability, run_script
from bullwait.waitlist.payloads import SlotDetails

ENTRY_STATES = ("waiting", "notified", "booked", "expired", "cancelled")
TERMINAL_STATES = frozenset({"booked", "expired", "cancelled"})


@dataclass(frozen=True)
class Entry:
    id: str
    salon_id: str
    customer_id: str
    customer_phone: str
    state: str
    joined_at_ms: int
    slot_id: str | None = None
    notified_at_ms: int | None = None
    expires_at_ms: int | None = None
    passed_to: str | None = None


@dataclass(frozen=True)
class Slot:
    id: str
    salon_id: str
    details: SlotDetails
    state: str  # open | offered | booked
    offered_to: str | None = None
    booked_by: str | None = None


@dataclass(frozen=True)
class Transition:
    """What a store operation did.

    `outcome` is the new state on success (`waiting`, `offered`, `open`, `expired`,
    `booked`, `cancelled`), `missing`, `already-<state>`, `early` (expiry before
    `expiresAt`), `other-slot` (the entry holds an offer for another slot) or
    `not-offered` (booking an entry that holds no offer). `next_id` is the entry the
    slot passed to, if any.
    """

    outcome: str
    waitlist_id: str | None = None
    slot_id: str | None = None
    next_id: str | None = None
    expires_at_ms: int | None = None

    @property
    def changed(self) -> bool:
        return not (
            self.outcome in ("missing", "early", "other-slot", "not-offered") or self.outcome.startswith("already-")
        )


@dataclass(frozen=True)
class Preferences:
    customer_id: str
    bookings: int
    services: dict[str, int] = field(default_factory=dict)
    masters: dict[str, int] = field(default_factory=dict)
    days: dict[int, int] = field(default_factory=dict)
    hours: dict[int, int] = field(default_factory=dict)

    @property
    def top_service(self) -> str | None:
        return _top(self.services)

    @property
    def top_master(self) -> str | None:
        return _top(self.masters)

    @property
    def preferred_days(self) -> list[int]:
        return _ranked(self.days)

    @property
    def preferred_hours(self) -> list[int]:
        return _ranked(self.hours)

    def to_dict(self) -> dict[str, Any]:
        return {
            "customerId": self.customer_id,
            "bookings": self.bookings,
            "topService": self.top_service,
            "topMaster": self.top_master,
            "preferredDays": self.preferred_days,
            "preferredHours": self.preferred_hours,
            "counts": {
                "services": self.services,
                "masters": self.masters,
                "days": {str(k): v for k, v in sorted(self.days.items())},
                "hours": {str(k): v for k, v in sorted(self.hours.items())},
            },
        }


def _top(counts: dict[str, int]) -> str | None:
    """The most frequent key; ties go to the smallest key, so the answer is stable."""
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _ranked(counts: dict[int, int], limit: int = 3) -> list[int]:
    """Up to `limit` keys, most frequent first (ties: smaller first)."""
    return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


@runtime_checkable
class WaitlistStore(Protocol):
    """Where the waitlist lives. Every method that changes state must be an atomic
    compare-and-set: concurrent or repeated calls may all return, but only one changes
    the state, and the others report `already-<state>` (or `missing`)."""

    async def join(
        self, salon_id: str, waitlist_id: str, customer_id: str, customer_phone: str, now_ms: int
    ) -> Transition: ...

    async def free_slot(
        self, salon_id: str, slot_id: str, details: SlotDetails, now_ms: int, expires_at_ms: int
    ) -> Transition: ...

    async def expire(
        self, salon_id: str, waitlist_id: str, slot_id: str, now_ms: int, next_expires_at_ms: int
    ) -> Transition: ...

    async def book(self, salon_id: str, waitlist_id: str, now_ms: int) -> Transition: ...

    async def cancel(self, salon_id: str, waitlist_id: str, now_ms: int, next_expires_at_ms: int) -> Transition: ...

    async def get_entry(self, salon_id: str, waitlist_id: str) -> Entry | None: ...

    async def get_slot(self, salon_id: str, slot_id: str) -> Slot | None: ...

    async def waiting(self, salon_id: str, limit: int = 100) -> list[str]: ...

    async def fold_booking(self, customer_id: str, booking_id: str, facts: dict[str, Any]) -> bool: ...

    async def recalculate_preferences(self, customer_id: str) -> int: ...

    async def preferences(self, customer_id: str) -> Preferences: ...

    async def close(self) -> None: ...


# --- Lua -------------------------------------------------------------------------------
# Offer a slot to the salon's first waiting entry (skipping ids whose entry is no longer
# waiting). Entry keys are built from ARGV's base, inside the salon's hash tag.
_OFFER_NEXT = """
local function offer_next(slotKey, waitingKey, entryBase, slotId, now, expiresAt)
  while true do
    local popped = redis.call('ZPOPMIN', waitingKey)
    if #popped == 0 then
      redis.call('HSET', slotKey, 'state', 'open', 'offeredTo', '', 'updatedAt', now)
      return ''
    end
    local id = popped[1]
    local ekey = entryBase .. id
    if redis.call('HGET', ekey, 'state') == 'waiting' then
      redis.call('HSET', ekey, 'state', 'notified', 'slotId', slotId, 'notifiedAt', now,
                 'expiresAt', expiresAt, 'updatedAt', now)
      redis.call('HSET', slotKey, 'state', 'offered', 'offeredTo', id, 'updatedAt', now)
      return id
    end
  end
end

-- An entry leaves its offer (expired, cancelled): if it still held the slot, the slot
-- goes to the next waiting entry. Records and returns who got it ('' for nobody).
local function pass_on(entryKey, slotKey, waitingKey, id, slotId, entryBase, now, expiresAt)
  local nextId = ''
  if redis.call('HGET', slotKey, 'offeredTo') == id then
    nextId = offer_next(slotKey, waitingKey, entryBase, slotId, now, expiresAt)
  end
  redis.call('HSET', entryKey, 'passedTo', nextId)
  return nextId
end
"""

# KEYS: entry, waiting, seq. ARGV: id, salonId, customerId, phone, now
_JOIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'already-' .. state, ''} end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'salonId', ARGV[2], 'customerId', ARGV[3],
           'customerPhone', ARGV[4], 'state', 'waiting', 'seq', seq, 'joinedAt', ARGV[5], 'updatedAt', ARGV[5])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return {'waiting', ''}
"""

# KEYS: slot, waiting. ARGV: slotId, salonId, details, now, expiresAt, entryBase
_FREE_SLOT = (
    _OFFER_NEXT
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'salonId', ARGV[2], 'details', ARGV[3],
             'state', 'open', 'offeredTo', '', 'createdAt', ARGV[4])
  state = 'open'
end
if state ~= 'open' then
  return {'already-' .. state, redis.call('HGET', KEYS[1], 'offeredTo') or ''}
end
local id = offer_next(KEYS[1], KEYS[2], ARGV[6], ARGV[1], ARGV[4], ARGV[5])
if id == '' then return {'open', ''} end
return {'offered', id}
"""
)

# KEYS: entry, waiting. ARGV: id, slotId (may be ''), now, nextExpiresAt, entryBase, slotBase
_EXPIRE = (
    _OFFER_NEXT
    + """
local e = redis.call('HMGET', KEYS[1], 'state', 'slotId', 'expiresAt', 'passedTo')
if not e[1] then return {'missing', '', '', ''} end
if e[1] ~= 'notified' then return {'already-' .. e[1], e[2] or '', e[4] or '', e[3] or ''} end
if ARGV[2] ~= '' and e[2] ~= ARGV[2] then return {'other-slot', e[2], '', e[3]} end
if tonumber(e[3]) > tonumber(ARGV[3]) then return {'early', e[2], '', e[3]} end
redis.call('HSET', KEYS[1], 'state', 'expired', 'updatedAt', ARGV[3])
local nextId = pass_on(KEYS[1], ARGV[6] .. e[2], KEYS[2], ARGV[1], e[2], ARGV[5], ARGV[3], ARGV[4])
return {'expired', e[2], nextId, e[3]}
"""
)

# KEYS: entry. ARGV: id, now, slotBase
_BOOK = """
local e = redis.call('HMGET', KEYS[1], 'state', 'slotId')
if not e[1] then return {'missing', ''} end
if e[1] == 'waiting' then return {'not-offered', ''} end
if e[1] ~= 'notified' then return {'already-' .. e[1], e[2] or ''} end
local slotKey = ARGV[3] .. e[2]
if redis.call('HGET', slotKey, 'offeredTo') ~= ARGV[1] then return {'other-slot', e[2]} end
redis.call('HSET', KEYS[1], 'state', 'booked', 'updatedAt', ARGV[2])
redis.call('HSET', slotKey, 'state', 'booked', 'bookedBy', ARGV[1], 'offeredTo', '', 'updatedAt', ARGV[2])
return {'booked', e[2]}
"""

# KEYS: entry, waiting. ARGV: id, now, nextExpiresAt, entryBase, slotBase
_CANCEL = (
    _OFFER_NEXT
    + """
local e = redis.call('HMGET', KEYS[1], 'state', 'slotId', 'passedTo')
if not e[1] then return {'missing', '', ''} end
if e[1] == 'waiting' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updatedAt', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'cancelled', '', ''}
end
if e[1] ~= 'notified' then return {'already-' .. e[1], e[2] or '', e[3] or ''} end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updatedAt', ARGV[2])
local nextId = pass_on(KEYS[1], ARGV[5] .. e[2], KEYS[2], ARGV[1], e[2], ARGV[4], ARGV[2], ARGV[3])
return {'cancelled', e[2], nextId}
"""
)

# KEYS: bookings, prefs. ARGV: bookingId, facts JSON
_COUNT_BOOKING = """
local function count_booking(prefsKey, factsJson)
  local f = cjson.decode(factsJson)
  redis.call('HINCRBY', prefsKey, 'bookings', 1)
  redis.call('HINCRBY', prefsKey, 'service:' .. f['serviceId'], 1)
  redis.call('HINCRBY', prefsKey, 'master:' .. f['masterId'], 1)
  redis.call('HINCRBY', prefsKey, 'day:' .. f['dayOfWeek'], 1)
  redis.call('HINCRBY', prefsKey, 'hour:' .. f['hour'], 1)
end
"""

_FOLD = (
    _COUNT_BOOKING
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
count_booking(KEYS[2], ARGV[2])
return 1
"""
)

# KEYS: bookings, prefs. Rebuild the counts from the recorded bookings.
_RECALCULATE = (
    _COUNT_BOOKING
    + """
redis.call('DEL', KEYS[2])
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 2, #all, 2 do
  count_booking(KEYS[2], all[i])
  n = n + 1
end
return n
"""
)


class RedisWaitlistStore:
    """The default `WaitlistStore`, in Redis (Cluster-ready: one hash tag per salon/customer).

    With `pipeline` (an `AutoPipeline` on `client`, which the store then owns) the scripts
    travel together on its connection instead of one pool round trip each: a worker's jobs
    finish their lookups in the same loop turns. Its fallback resends a call whose reply
    was lost, as redis-py's retry does; every script is safe to run twice (compare-and-set:
    a second run answers `already-<state>`, a fold finds its booking, a recalculation
    rebuilds the same counts). Writes confirmed by WAIT (`durability`) keep their own
    connection: WAIT counts the replicas of the connection it is sent on.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "bullwait:",
        durability: Durability | None = None,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.pipeline = pipeline
        # BULLWAIT_WAIT_REPLICAS: each transition reported only once replicas hold it.
        self.durability = durability or Durability()
        self._join = client.register_script(_JOIN)
        self._free = client.register_script(_FREE_SLOT)
        self._expire = client.register_script(_EXPIRE)
        self._book = client.register_script(_BOOK)
        self._cancel = client.register_script(_CANCEL)
        self._fold = client.register_script(_FOLD)
        self._recalc = client.register_script(_RECALCULATE)

    # -- keys --
    def salon_key(self, salon_id: str, suffix: str) -> str:
        return f"{self.prefix}{{salon:{salon_id}}}:{suffix}"

    def customer_key(self, customer_id: str, suffix: str) -> str:
        return f"{self.prefix}{{cust:{customer_id}}}:{suffix}"

    def _entry_base(self, salon_id: str) -> str:
        return self.salon_key(salon_id, "entry:")

    def _slot_base(self, salon_id: str) -> str:
        return self.salon_key(salon_id, "slot:")

    # -- transitions --
    async def join(
        self, salon_id: str, waitlist_id: str, customer_id: str, customer_phone: str, now_ms: int
    ) -> Transition:
        keys = [
            self._entry_base(salon_id) + waitlist_id,
            self.salon_key(salon_id, "waiting"),
            self.salon_key(salon_id, "seq"),
        ]
        args = [waitlist_id, salon_id, customer_id, customer_phone, now_ms]
        outcome, _ = await self._transition(self._join, keys, args)
        return Transition(outcome, waitlist_id=waitlist_id)

    async def free_slot(
        self, salon_id: str, slot_id: str, details: SlotDetails, now_ms: int, expires_at_ms: int
    ) -> Transition:
        keys = [self._slot_base(salon_id) + slot_id, self.salon_key(salon_id, "waiting")]
        args = [slot_id, salon_id, json.dumps(details.to_wire()), now_ms, expires_at_ms, self._entry_base(salon_id)]
        outcome, offered = await self._transition(self._free, keys, args)
        return Transition(outcome, slot_id=slot_id, next_id=offered or None)

    async def expire(
        self, salon_id: str, waitlist_id: str, slot_id: str, now_ms: int, next_expires_at_ms: int
    ) -> Transition:
        keys = [self._entry_base(salon_id) + waitlist_id, self.salon_key(salon_id, "waiting")]
        args = [waitlist_id, slot_id, now_ms, next_expires_at_ms, self._entry_base(salon_id), self._slot_base(salon_id)]
        outcome, slot, nxt, expires = await self._transition(self._expire, keys, args)
        return Transition(outcome, waitlist_id, slot or None, nxt or None, int(expires) if expires else None)

    async def book(self, salon_id: str, waitlist_id: str, now_ms: int) -> Transition:
        keys = [self._entry_base(salon_id) + waitlist_id]
        outcome, slot = await self._transition(self._book, keys, [waitlist_id, now_ms, self._slot_base(salon_id)])
        return Transition(outcome, waitlist_id, slot or None)

    async def cancel(self, salon_id: str, waitlist_id: str, now_ms: int, next_expires_at_ms: int) -> Transition:
        keys = [self._entry_base(salon_id) + waitlist_id, self.salon_key(salon_id, "waiting")]
        args = [waitlist_id, now_ms, next_expires_at_ms, self._entry_base(salon_id), self._slot_base(salon_id)]
        outcome, slot, nxt = await self._transition(self._cancel, keys, args)
        return Transition(outcome, waitlist_id, slot or None, nxt or None)

    async def _transition(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        """Run a transition script; with durability, confirmed by WAIT (`bullwait.engine.durable`)."""
        if not self.durability.enabled:
            return list(await self._run(script, keys, args))
        reply = await run_script(
            self.client, self.durability, script, keys, args, f"waitlist change of {keys[0]} not durable", _settle
        )
        return list(reply)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self.pipeline is not None:
            return await self.pipeline.run_script(script, keys, args)
        return await script(keys=keys, args=args)

    # -- reads --
    async def get_entry(self, salon_id: str, waitlist_id: str) -> Entry | None:
        raw = await self._hash(self._entry_base(salon_id) + waitlist_id)
        if not raw:
            return None
        return Entry(
            id=raw["id"],
            salon_id=raw["salonId"],
            customer_id=raw["customerId"],
            customer_phone=raw["customerPhone"],
            state=raw["state"],
            joined_at_ms=int(raw["joinedAt"]),
            slot_id=raw.get("slotId") or None,
            notified_at_ms=_int(raw.get("notifiedAt")),
            expires_at_ms=_int(raw.get("expiresAt")),
            passed_to=raw.get("passedTo") or None,
        )

    async def get_slot(self, salon_id: str, slot_id: str) -> Slot | None:
        raw = await self._hash(self._slot_base(salon_id) + slot_id)
        if not raw:
            return None
        return Slot(
            id=raw["id"],
            salon_id=raw["salonId"],
            # Validated when stored; re-validating would refuse a slot whose day has passed.
            details=SlotDetails.model_validate(json.loads(raw["details"]), context={"stored": True}),
            state=raw["state"],
            offered_to=raw.get("offeredTo") or None,
            booked_by=raw.get("bookedBy") or None,
        )

    async def waiting(self, salon_id: str, limit: int = 100) -> list[str]:
        members = await self.client.zrange(self.salon_key(salon_id, "waiting"), 0, limit - 1)
        return cast(list[str], members)  # the client decodes replies (decode_responses=True)

    async def _hash(self, key: str) -> dict[str, str]:
        # redis-py types replies as bytes | str; the client decodes them (decode_responses=True).
        return cast(dict[str, str], await self.client.hgetall(key))

    # -- preferences --
    async def fold_booking(self, customer_id: str, booking_id: str, facts: dict[str, Any]) -> bool:
        keys = [self.customer_key(customer_id, "bookings"), self.customer_key(customer_id, "prefs")]
        args = [booking_id, json.dumps(facts, sort_keys=True)]
        if not self.durability.enabled:
            return bool(await self._run(self._fold, keys, args))
        # A repeat finds its own first fold (0): the first run's answer stands.
        return bool(
            await run_script(
                self.client, self.durability, self._fold, keys, args, f"booking {booking_id} not recorded durably", max
            )
        )

    async def recalculate_preferences(self, customer_id: str) -> int:
        keys = [self.customer_key(customer_id, "bookings"), self.customer_key(customer_id, "prefs")]
        return int(await self._run(self._recalc, keys, []))

    async def preferences(self, customer_id: str) -> Preferences:
        raw = await self._hash(self.customer_key(customer_id, "prefs"))
        groups: dict[str, dict[str, int]] = {"service": {}, "master": {}, "day": {}, "hour": {}}
        for name, value in raw.items():
            kind, _, key = name.partition(":")
            if kind in groups:
                groups[kind][key] = int(value)
        return Preferences(
            customer_id=customer_id,
            bookings=int(raw.get("bookings", 0)),
            services=groups["service"],
            masters=groups["master"],
            days={int(k): v for k, v in groups["day"].items()},
            hours={int(k): v for k, v in groups["hour"].items()},
        )

    async def close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close()  # calls in flight finish first
        await self.client.aclose()


def _settle(first: list[Any], again: list[Any]) -> list[Any]:
    """A transition sent again after a short WAIT finds its own first run done
    (`already-expired` after `expired`, `already-waiting` after `waiting`; `open` again):
    report the first run. Anything else (the first run was lost with the old master and
    the state moved on) is reported as the repeat found it."""
    outcome = first[0]
    return first if again[0] in (outcome, f"already-{outcome}") else again


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None
