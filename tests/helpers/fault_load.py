"""The load, the poison jobs and the bookkeeping of the fault-injection suite
(test_reliability_faults.py).

- `offer_slots`: the waitlist flow through `Waitlist` (the application side, writing
  straight to Redis): per salon two customers, A and B, and one freed slot. A is offered
  at once (notification + timer); A's timer, run by the worker, expires A and offers the
  slot to B (notification + timer, enqueued by the worker through the proxy); B's timer
  expires B. So every salon makes two notifications and two timers.
- `write_poison`: job hashes written by hand with HSET (what a buggy producer, an old
  client or a hand edit leaves behind), pushed to `wait` like a real add.
- `Ledger`: every BullMQ event of the queues, read as it is written (XREAD from the
  last id seen), so a job's history survives `removeOnComplete` and stream trimming.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bullwait.waitlist.catalog import EXPIRY_JOB_ID_PREFIX, JOB_NAMES, QUEUE_NAMES, QueueKey
from bullwait.waitlist.offers import Waitlist, notification_job_id

from helpers.jobdata import SLOT_DETAILS

SLOT = "slot-1"
NOTIFY = QUEUE_NAMES[QueueKey.WAITLIST_NOTIFICATION]
EXPIRY = QUEUE_NAMES[QueueKey.WAITLIST_EXPIRY]
PREFERENCE = QUEUE_NAMES[QueueKey.PREFERENCE_CALCULATION]
QUEUES = (NOTIFY, EXPIRY, PREFERENCE)
JOB_NAME = {NOTIFY: JOB_NAMES["SEND_SLOT_AVAILABLE"], EXPIRY: JOB_NAMES["CHECK_EXPIRY"]}


@dataclass(frozen=True)
class Customer:
    salon: str
    waitlist_id: str
    phone: str  # E.164, as joined

    @property
    def to(self) -> str:
        """The number as the Cloud API request carries it."""
        return self.phone.lstrip("+")

    @property
    def notification(self) -> str:
        return notification_job_id(self.waitlist_id, SLOT)

    @property
    def timer(self) -> str:
        return f"{EXPIRY_JOB_ID_PREFIX}{self.waitlist_id}"


def customers(salons: int) -> list[Customer]:
    """A and B of every salon, each with a phone of their own (sends are counted per phone)."""
    out = []
    for i in range(salons):
        out.append(Customer(f"fs{i}", f"a{i}", f"+3461{i:07d}"))
        out.append(Customer(f"fs{i}", f"b{i}", f"+3462{i:07d}"))
    return out


async def offer_slots(waitlist: Waitlist, people: list[Customer], between: Any = None) -> None:
    """Join A and B to each salon, then free the salon's slot (A is offered). `between` is
    awaited once half the salons are offered (to mix other jobs into the load)."""
    for c in people:
        await waitlist.join(c.salon, c.waitlist_id, f"cust-{c.waitlist_id}", c.phone)
    salons = list(dict.fromkeys(c.salon for c in people))
    for n, salon in enumerate(salons):
        if between is not None and n == len(salons) // 2:
            await between()
        result, offer = await waitlist.free_slot(salon, SLOT, SLOT_DETAILS)
        assert offer is not None, f"{salon}: free_slot gave {result}"


# --- poison jobs ---------------------------------------------------------------------------

BAD_DATA = b'{"waitlistId": "poison", "note": "fails validation: required fields missing"}'
# Each entry: what is broken -> the hash fields that differ from a well-formed job.
POISON: dict[str, dict[str, bytes]] = {
    "attempts-infinity": {"opts": b'{"attempts": 1e400, "backoff": {"type": "exponential", "delay": 1000}}'},
    "attempts-string": {"opts": b'{"attempts": "3", "backoff": {"type": "exponential", "delay": 1000}}'},
    "timestamp-abc": {"timestamp": b"abc"},
    "delay-abc": {"delay": b"abc"},
    "priority-abc": {"priority": b"abc"},
    "atm-abc": {"atm": b"abc"},
    "opts-array": {"opts": b"[3, 1000]"},
    "data-not-utf8": {"data": b'{"waitlistId": "\xff\xfe\xfd"}'},
    "name-not-utf8": {"name": b"send-slot-available\xff"},
    "id-not-utf8": {},
}


def poison_id(kind: str) -> bytes:
    return b"poison-id-\xff\xfe" if kind == "id-not-utf8" else f"poison-{kind}".encode()


async def write_poison(raw: aioredis.Redis, prefix: str, queue: str) -> dict[bytes, str]:
    """Write every POISON job into `queue`'s wait list; returns job id -> what is broken."""
    written = {}
    base = f"{prefix}:{queue}:".encode()
    for kind, broken in POISON.items():
        job_id = poison_id(kind)
        fields: dict[bytes, bytes] = {
            b"name": JOB_NAME[queue].encode(),
            b"data": BAD_DATA,
            b"opts": b'{"attempts": 3, "backoff": {"type": "exponential", "delay": 1000}}',
            b"timestamp": str(int(time.time() * 1000)).encode(),
            b"delay": b"0",
            b"priority": b"0",
        }
        fields.update({k.encode(): v for k, v in broken.items()})
        async with raw.pipeline(transaction=True) as pipe:
            pipe.hset(base + job_id, mapping=fields)  # type: ignore[arg-type]
            pipe.lpush(base + b"wait", job_id)
            pipe.zadd(base + b"marker", {b"0": 0})  # wakes a worker blocked on the queue
            await pipe.execute()
        written[job_id] = kind
    return written


# --- the ledger of events ----------------------------------------------------------------

Key = tuple[str, bytes]  # (queue, job id)


@dataclass
class Ledger:
    raw: aioredis.Redis
    prefix: str
    events: dict[Key, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    last: dict[Key, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    _ids: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = {self.stream(q): b"0-0" for q in QUEUES}

    def stream(self, queue: str) -> bytes:
        return f"{self.prefix}:{queue}:events".encode()

    async def read(self) -> None:
        """Everything written to the event streams since the last call."""
        while True:
            batch = await self.raw.xread(self._ids, count=5000)  # type: ignore[arg-type]
            if not batch:
                return
            for stream, entries in batch:
                queue = stream.decode().split(":")[-2]
                for entry_id, fields in entries:
                    self._ids[stream] = entry_id
                    self._record(queue, fields)

    def _record(self, queue: str, fields: dict[bytes, bytes]) -> None:
        job_id = fields.get(b"jobId")
        event = fields.get(b"event", b"").decode(errors="replace")
        if job_id is None:
            return
        self.events[(queue, job_id)][event] += 1
        for name in (b"returnvalue", b"failedReason"):
            if name in fields:
                self.last[(queue, job_id)][name.decode()] = fields[name].decode(errors="replace")

    def count(self, queue: str, job_id: str | bytes, event: str) -> int:
        return self.events.get((queue, _b(job_id)), Counter())[event]

    def finished(self, queue: str, job_id: str | bytes) -> bool:
        return self.count(queue, job_id, "completed") + self.count(queue, job_id, "failed") > 0

    def outcome(self, queue: str, job_id: str | bytes) -> str | None:
        """The `outcome` of the job's last completion, if it completed."""
        raw = self.last.get((queue, _b(job_id)), {}).get("returnvalue")
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            return None
        return value.get("outcome") if isinstance(value, dict) else None

    def reason(self, queue: str, job_id: str | bytes) -> str:
        return self.last.get((queue, _b(job_id)), {}).get("failedReason", "")

    def history(self, queue: str, job_id: str | bytes) -> str:
        counts = self.events.get((queue, _b(job_id)), Counter())
        return ",".join(f"{k}x{v}" for k, v in sorted(counts.items())) or "no events"

    def stalled(self, queue: str) -> list[bytes]:
        return [jid for (q, jid), c in self.events.items() if q == queue and c["stalled"]]


def _b(job_id: str | bytes) -> bytes:
    return job_id if isinstance(job_id, bytes) else job_id.encode()


async def job_state(raw: aioredis.Redis, prefix: str, queue: str, job_id: str | bytes) -> str:
    """Where a job is, read from the queue's own keys (works for ids that are not UTF-8)."""
    base = f"{prefix}:{queue}:".encode()
    jid = _b(job_id)
    for state in ("completed", "failed", "delayed", "prioritized"):
        if await raw.zscore(base + state.encode(), jid) is not None:
            return state
    for state in ("active", "wait", "paused"):
        if await raw.lpos(base + state.encode(), jid) is not None:
            return state
    return "in no state (hash only)" if await raw.exists(base + jid) else "missing"


async def describe_job(raw: aioredis.Redis, prefix: str, ledger: Ledger, queue: str, job_id: str | bytes) -> str:
    """One line: id, state, attempts, stalled count, failedReason, event history."""
    base = f"{prefix}:{queue}:".encode()
    atm, stc, reason = await raw.hmget(base + _b(job_id), [b"atm", b"stc", b"failedReason"])
    text = (reason or b"").decode(errors="replace")[:160]
    shown = _b(job_id).decode(errors="backslashreplace")
    outcome = ledger.outcome(queue, job_id)
    return (
        f"{queue}/{shown}: {await job_state(raw, prefix, queue, job_id)}, atm={_s(atm)}, stc={_s(stc)}, "
        f"events[{ledger.history(queue, job_id)}]"
        + (f", outcome={outcome}" if outcome else "")
        + (f", failedReason={text!r}" if text else "")
    )


def _s(value: bytes | None) -> str:
    return value.decode(errors="backslashreplace") if value is not None else "-"
