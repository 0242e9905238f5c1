"""Fault injection (Proof): a real `bullwait worker` subprocess reaches Redis only
through `faultproxy.FaultProxy`, which freezes, cuts replies half-way, resets connections
or adds latency while the worker runs the waitlist flow against the fake Cloud API.

Per fault, the application side (`Waitlist`, straight to Redis) offers one slot in each of
NOTIFICATIONS / 2 salons, each with two customers: A is notified at once, A's timer (run by
the worker) passes the slot to B, B's timer expires B; so NOTIFICATIONS sends and as many
timers. Mixed into that load: the hand-written poison jobs of `fault_load.POISON` in both
the notification and the expiry queue, and a Node bullmq 6 producer (the NestJS module's NestJS
module) adding notifications, timers and a job with `attempts: '3'`.

Afterwards, whatever the fault:
- 0 lost: every notification ended `completed` (sent, or skipped because its offer had
  already expired: a timer may legitimately beat a notification delayed by the fault),
  never `failed`, and every completed send reached the fake API;
- 0 sent twice: the fake API received each customer's offer at most once;
- timers all ran: every timer completed once, every entry ended `expired`;
- 0 stuck: nothing left in `active`, `wait` or `delayed`; no good job stalled;
- every poison job ended `failed` exactly once, with a reason.

Faults are injected at points of progress (after so many sends), never on a clock, and the
suite waits as long as jobs keep finishing (IDLE_S without progress ends the wait), so a
slow machine makes it slower, not red. NOTIFICATIONS is 300 by default (CI) and
2,000 with BULLWAIT_SLOW=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from bullwait.dev.embedded import RedisServer
from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings

from helpers.fault_load import (
    EXPIRY,
    NOTIFY,
    QUEUES,
    Customer,
    Ledger,
    customers,
    describe_job,
    job_state,
    offer_slots,
    write_poison,
)
from helpers.faultproxy import FaultProxy
from helpers.nodecompat import HAVE_NODE, node_json, run_node

SLOW = os.environ.get("BULLWAIT_SLOW") == "1"
NOTIFICATIONS = 2000 if SLOW else 300
# How long an offer stays open (A's and B's timers fire this long after their offer): well
# above a send's claim (WHATSAPP_TIMEOUT_S + 2 s) and a freeze, so a notification held up by
# either still finds its offer open and a lost send shows as lost, not as "skipped".
OFFER_S = 10.0
IDLE_S = 45.0  # stop waiting when no job finished for this long (then report what is unfinished)
CAP_S = 900.0 if SLOW else 300.0  # and in any case after this long
WHATSAPP_TIMEOUT_S = 3  # a send's claim lasts this + 2 s: keeps today's "busy" waits short
FREEZE_S = 7.0  # longer than redis-py's 5 s socket timeout
CUT_EVERY = 40  # cut one reply in this many (all connections together)
LATENCY_MS = 25  # each way
NODE_JOBS = 10  # notifications and as many timers from the Node producer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as p:
        yield p


# --- the faults: what to do as sends progress ----------------------------------------------


@dataclass
class Fault:
    """Injects a fault as the load progresses; `tick` is called with the sends seen so far."""

    name: str
    done: set[int] = field(default_factory=set)

    def start(self, proxy: FaultProxy) -> None:
        if self.name == "latency":
            proxy.latency(LATENCY_MS)
        elif self.name == "cut":
            # Lands on whatever Redis answers next: a send-record claim, a store script, a
            # completion, a lock renewal, a blocking wait, a reconnect's handshake.
            proxy.cut_every(CUT_EVERY)

    def tick(self, proxy: FaultProxy, sent: int, expected: int) -> None:
        if self.name == "freeze":
            self._at(sent, expected, (0.2, 0.6), lambda: proxy.freeze(FREEZE_S))
        elif self.name == "reset":
            self._at(sent, expected, tuple(k / 20 for k in range(1, 20)), proxy.reset_all)

    def _at(self, sent: int, expected: int, points: tuple[float, ...], act: Any) -> None:
        for n, point in enumerate(points):
            if n not in self.done and sent >= point * expected:
                self.done.add(n)
                act()

    def stop(self, proxy: FaultProxy) -> None:
        proxy.latency(0)
        proxy.cut_every(0)


# --- the Node bullmq 6 producer ------------------------------------------------------------

NODE_POISON = """
const { Queue } = require('bullmq');
const { loadConfig } = require('./lib/config');
(async () => {
  const cfg = loadConfig();
  const q = new Queue(cfg.queueNames.WAITLIST_NOTIFICATION, { connection: cfg.connection, prefix: cfg.prefix });
  // A string where BullMQ expects a number (an env var passed through): Node accepts it.
  const job = await q.add('send-slot-available', { waitlistId: 'node-poison' },
    { attempts: '3', jobId: 'node-poison-attempts-string' });
  await q.close();
  process.stdout.write(JSON.stringify({ jobId: job.id }) + '\\n');
})().catch((err) => { process.stderr.write(String(err) + '\\n'); process.exit(1); });
"""


def node_produce(env: dict[str, str]) -> dict[str, Any]:
    """The NestJS module's NestJS module adds NODE_JOBS notifications and timers (entries bullwait's
    store does not know: sent as asked, timers end `missing`), then one poison job."""
    steps = []
    for k in range(NODE_JOBS):
        entry = {
            "id": f"nw{k}",
            "customerId": f"cust-nw{k}",
            "salonId": f"node-salon-{k % 3}",
            "customer": {"phone": f"+3463{k:07d}"},
        }
        slot = {
            "id": "slot-n",
            "date": "2099-01-01",
            "startTime": "10:30",
            "masterId": "master-1",
            "master": {"name": "Ana"},
            "serviceId": "service-1",
            "service": {"name": "Haircut"},
            "duration": 45,
            "price": 35.5,
        }
        steps.append({"action": "sendSlotAvailableNotification", "args": {"waitlistEntry": entry, "slot": slot}})
        timer_entry = dict(entry, id=f"nt{k}")
        timer_args = {"waitlistEntry": timer_entry, "slot": slot, "delayMs": 500}
        steps.append({"action": "notifyWaitlistCustomer", "args": timer_args})
    ids = node_json(env, "nest/produce.js", "batch", steps, timeout=120)
    poison = json.loads(run_node(env, "-e", NODE_POISON, timeout=60).stdout.strip().splitlines()[-1])
    return {
        "notifications": {ids[2 * k]["jobId"]: f"3463{k:07d}" for k in range(NODE_JOBS)},
        "timers": [ids[2 * k + 1]["jobId"] for k in range(NODE_JOBS)],
        "poison": poison["jobId"],
    }


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    raw: aioredis.Redis
    prefix: str
    ledger: Ledger
    api: FakeWhatsApp
    people: list[Customer]
    poison: dict[tuple[str, bytes], str] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)

    def expected_sends(self) -> int:
        return len(self.people) + len(self.node.get("notifications", {}))

    def pending(self) -> list[str]:
        """What has not finished yet (first few), for the progress check and messages."""
        left = [f"{NOTIFY}/{c.notification}" for c in self.people if not self.ledger.finished(NOTIFY, c.notification)]
        left += [f"{EXPIRY}/{c.timer}" for c in self.people if not self.ledger.finished(EXPIRY, c.timer)]
        left += [
            f"{q}/{jid.decode(errors='backslashreplace')}"
            for (q, jid) in self.poison
            if not self.ledger.count(q, jid, "failed")
        ]
        left += [f"{NOTIFY}/{j}" for j in self.node.get("notifications", {}) if not self.ledger.finished(NOTIFY, j)]
        left += [f"{EXPIRY}/{j}" for j in self.node.get("timers", []) if not self.ledger.finished(EXPIRY, j)]
        if "poison" in self.node and not self.ledger.count(NOTIFY, self.node["poison"], "failed"):
            left.append(f"{NOTIFY}/{self.node['poison']}")
        return left


async def drive(run: Run, fault: Fault, proxy: FaultProxy) -> dict[str, float]:
    """Inject the fault as sends progress until every job finished, or nothing finished
    for IDLE_S. Returns when the good jobs and everything were done (s), for the summary."""
    started = last_change = time.monotonic()
    left, times = -1, {}
    while True:
        await run.ledger.read()
        fault.tick(proxy, len(run.api.received()), run.expected_sends())
        pending = run.pending()
        if "good" not in times and not [p for p in pending if "poison" not in p]:
            times["good"] = time.monotonic() - started
        if not pending:
            break
        if len(pending) != left:
            left, last_change = len(pending), time.monotonic()
        elif time.monotonic() - last_change > IDLE_S or time.monotonic() - started > CAP_S:
            break
        await asyncio.sleep(0.1)
    times["all"] = time.monotonic() - started
    return times


async def audit(run: Run, services: Services) -> tuple[list[str], dict[str, int]]:
    """Every broken promise, one line each, naming the jobs (first few) and how they ended."""
    raw, prefix, ledger = run.raw, run.prefix, run.ledger
    problems: list[str] = []
    received = Counter(r.body.get("to") if isinstance(r.body, dict) else None for r in run.api.received())

    async def show(queue: str, ids: list[Any]) -> str:
        lines = [await describe_job(raw, prefix, ledger, queue, j) for j in ids[:8]]
        return "\n    " + "\n    ".join(lines) + (f"\n    ... and {len(ids) - 8} more" if len(ids) > 8 else "")

    def report(what: str, queue: str, ids: list[Any], total: int) -> Any:
        async def add() -> None:
            if ids:
                problems.append(f"{what}: {len(ids)} of {total}{await show(queue, ids)}")

        return add()

    # Notifications of the waitlist flow and of the Node producer.
    sends = {c.notification: c.to for c in run.people} | dict(run.node.get("notifications", {}))
    skipped = [j for j in sends if (ledger.outcome(NOTIFY, j) or "").startswith("skipped")]
    lost = [j for j in sends if received[sends[j]] == 0 and j not in skipped]
    twice = [j for j in sends if received[sends[j]] > 1]
    failed = [j for j in sends if ledger.count(NOTIFY, j, "failed")]
    completed_twice = [j for j in sends if ledger.count(NOTIFY, j, "completed") > 1]
    bad_skips = [j for j in skipped if ledger.outcome(NOTIFY, j) != "skipped-expired" or received[sends[j]]]
    await report("LOST (notification never reached the API, not skipped)", NOTIFY, lost, len(sends))
    if twice:
        counts = ", ".join(f"{j}: {received[sends[j]]} requests" for j in twice[:8])
        problems.append(f"SENT TWICE: {len(twice)} of {len(sends)} ({counts}){await show(NOTIFY, twice)}")
    await report("notification FAILED", NOTIFY, failed, len(sends))
    await report("notification completed more than once", NOTIFY, completed_twice, len(sends))
    await report("skipped for a reason other than an expired offer, or skipped yet sent", NOTIFY, bad_skips, len(sends))

    # Timers: each ran once; every entry of the flow ended expired.
    timers = [c.timer for c in run.people]
    # `already-expired`: the expiry ran in Redis, its reply was lost and the re-run found it done.
    not_run = [
        t
        for t in timers
        if ledger.outcome(EXPIRY, t) not in ("expired", "already-expired") or ledger.count(EXPIRY, t, "completed") != 1
    ]
    not_run += [t for t in run.node.get("timers", []) if ledger.outcome(EXPIRY, t) != "missing"]
    await report(
        "TIMER did not complete once as `expired` (Node timers: `missing`)", EXPIRY, not_run, len(timers) + NODE_JOBS
    )
    states = Counter()
    not_expired = []
    for c in run.people:
        entry = await services.store.get_entry(c.salon, c.waitlist_id)  # type: ignore[union-attr]
        states[entry.state if entry else "missing"] += 1
        if entry is None or entry.state != "expired":
            not_expired.append(f"{c.salon}/{c.waitlist_id}: {entry.state if entry else 'missing'}")
    if not_expired:
        problems.append(f"entries not expired: {len(not_expired)} of {len(run.people)}: {not_expired[:8]}")

    # Poison: failed exactly once, with a reason, never completed.
    poison = dict(run.poison)
    if "poison" in run.node:
        poison[(NOTIFY, run.node["poison"].encode())] = "node attempts '3'"
    wrong = []
    for (queue, jid), kind in poison.items():
        state = await job_state(raw, prefix, queue, jid)
        reason = await raw.hget(f"{prefix}:{queue}:".encode() + jid, b"failedReason")
        once = ledger.count(queue, jid, "failed") == 1 and not ledger.count(queue, jid, "completed")
        if not once or state != "failed" or not reason:
            wrong.append(f"[{kind}] " + await describe_job(raw, prefix, ledger, queue, jid))
    if wrong:
        listed = "\n    ".join(wrong)
        problems.append(f"POISON not failed exactly once with a reason: {len(wrong)} of {len(poison)}\n    {listed}")

    # Nothing stuck or left behind; no good job stalled.
    poison_ids = {(q, j) for q, j in poison}
    for queue in QUEUES:
        base = f"{prefix}:{queue}:".encode()
        active = [j for j in await raw.lrange(base + b"active", 0, -1) if (queue, j) not in poison_ids]
        await report(f"STUCK IN ACTIVE ({queue}, not poison)", queue, active, len(active))
        left = [
            *await raw.lrange(base + b"wait", 0, -1),
            *await raw.zrange(base + b"delayed", 0, -1),
            *await raw.zrange(base + b"prioritized", 0, -1),
        ]
        left = [j for j in left if (queue, j) not in poison_ids]
        await report(f"left waiting/delayed ({queue}, not poison)", queue, left, len(left))
        stalled = [j for j in ledger.stalled(queue) if (queue, j) not in poison_ids]
        await report(f"good job STALLED ({queue})", queue, stalled, len(stalled))

    numbers = {
        "notifications": len(sends),
        "received": sum(received.values()),
        "skipped": len(skipped),
        "lost": len(lost),
        "twice": len(twice),
        "failed": len(failed),
        "poison_wrong": len(wrong),
        **{f"entries_{k}": v for k, v in states.items()},
    }
    return problems, numbers


@pytest.mark.parametrize("fault", ["freeze", "cut", "reset", "latency"])
async def test_fault_loses_nothing_sends_once_and_fails_poison_once(  # type: ignore[no-untyped-def]
    fault: str,
    settings: Settings,
    env: dict[str, str],
    prefix: str,
    redis_server: RedisServer,
    api: FakeWhatsApp,
    proxy: FaultProxy,
    start_worker,
) -> None:
    worker = start_worker(
        extra_env={
            **api.env(),
            "REDIS_URL": proxy.url(),
            "WAITLIST_OFFER_MINUTES": str(OFFER_S / 60),
            "WHATSAPP_TIMEOUT_SECONDS": str(WHATSAPP_TIMEOUT_S),
            "WHATSAPP_MAX_MESSAGES_PER_SECOND": "10000",  # the global limit is not under test here
        }
    )
    services = await build_services(settings.with_overrides(waitlist_offer_minutes=OFFER_S / 60))
    raw = aioredis.Redis(port=redis_server.port)  # bytes: poison ids and data are not UTF-8
    run = Run(raw, prefix, Ledger(raw, prefix), api, customers(NOTIFICATIONS // 2))
    plan = Fault(fault)
    try:
        plan.start(proxy)

        async def mix_in() -> None:
            for queue in (NOTIFY, EXPIRY):
                run.poison.update({(queue, j): k for j, k in (await write_poison(raw, prefix, queue)).items()})
            if HAVE_NODE:
                run.node = await asyncio.to_thread(node_produce, env)

        await offer_slots(services.waitlist, run.people, between=mix_in)  # type: ignore[arg-type]
        seconds = await drive(run, plan, proxy)
        plan.stop(proxy)
        problems, numbers = await audit(run, services)
    finally:
        await services.close()
        await raw.aclose()
    code = worker.terminate(timeout=60)
    if code != 0:
        problems.append(f"worker exited {code} on SIGTERM")
    summary = (
        f"[{fault}] good jobs done after {seconds.get('good', -1):.0f}s, all after {seconds['all']:.0f}s; "
        f"proxy {proxy.counters}; {numbers}"
        + ("" if HAVE_NODE else " (no Node producer: node-compat/node_modules missing)")
    )
    print(summary)
    unfinished = run.pending()
    if unfinished:
        problems.append(f"unfinished after {IDLE_S:.0f}s without progress: {len(unfinished)}: {unfinished[:8]}")
    assert not problems, summary + "\n" + "\n".join(problems)
