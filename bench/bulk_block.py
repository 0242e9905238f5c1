"""`python -m bench.bulk_block [--jobs N]`: how long each bulk operation blocks Redis.

Starts its own redis-server (free port, AOF off), fills one state at a time with N jobs
(default 100,000) written directly in BullMQ's layout, runs one bullwait operation on them
and reports, per operation: the longest single command Redis executed (SLOWLOG, every
command over 1 ms is logged), the longest PING round trip seen by a client probing every
millisecond meanwhile (what another app would feel: it also counts pipelined bursts and
MULTI blocks), the number of commands over 50 ms, and the wall time. Never touches any
other Redis. Takes a few minutes at 100,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from bullwait.dev.embedded import RedisServer
from bullwait.ops.migrate import migrate_legacy
from bullwait.ops.queues import Ops
from bullwait.settings import Settings
from bullwait.waitlist.catalog import LEGACY_QUEUE_NAMES, QUEUE_NAMES, QueueKey

PREFIX = "bull"
KEY = QueueKey.WAITLIST_EXPIRY
DAY_MS = 86_400_000

# Writes `n` jobs starting at id ARGV[2] into one state, as BullMQ would have left them.
_FILL_LUA = """
local rcall = redis.call
local base, state = KEYS[1], ARGV[1]
local first, n, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local data = ARGV[5]
local opts = '{"attempts":3,"backoff":{"type":"exponential","delay":1000},"delay":0}'
local old = now - 2 * 86400000
for i = first, first + n - 1 do
  local id = tostring(i)
  local key = base .. id
  rcall("HSET", key, "name", "check-expiry", "data", data, "opts", opts, "timestamp", old, "delay", 0,
        "priority", 0, "atm", 0, "ats", 0)
  if state == "wait" or state == "paused" then
    rcall("LPUSH", base .. state, id)
  elseif state == "active" then
    rcall("HSET", key, "processedOn", old, "ats", 1)
    rcall("LPUSH", base .. "active", id)
  elseif state == "prioritized" then
    rcall("HSET", key, "priority", 5)
    rcall("ZADD", base .. "prioritized", 5 * 4294967296 + i, id)
  elseif state == "delayed" then
    rcall("HSET", key, "delay", 3600000)
    rcall("ZADD", base .. "delayed", (now + 3600000) * 4096 + (i % 4096), id)
  elseif state == "completed" then
    rcall("HSET", key, "processedOn", old, "finishedOn", old, "returnvalue", '{"ok":true}', "atm", 1, "ats", 1)
    rcall("ZADD", base .. "completed", old, id)
  elseif state == "failed" then
    rcall("HSET", key, "processedOn", old, "finishedOn", old, "failedReason", "boom", "atm", 3, "ats", 3,
          "stacktrace", '["Error: boom\\\\n    at handler (worker.py:1)"]')
    rcall("ZADD", base .. "failed", old, id)
  end
end
return n
"""

DATA = json.dumps(
    {
        "waitlistId": "w-000000",
        "slotId": "slot-000000",
        "customerId": "cust-000000",
        "salonId": "salon-1",
        "notifiedAt": "2026-01-01T10:00:00.000Z",
    }
)


def fill(client: redis.Redis, queue: str, state: str, n: int, first: int = 1) -> None:
    script = client.register_script(_FILL_LUA)
    now = int(time.time() * 1000)
    for start in range(first, first + n, 5000):
        script(keys=[f"{PREFIX}:{queue}:"], args=[state, start, min(5000, first + n - start), now, DATA])


class Probe:
    """A client that PINGs every millisecond and keeps the longest round trip."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port)
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.client.ping()
            self.worst = max(self.worst, time.perf_counter() - t0)
            time.sleep(0.001)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def _median_ms(micros: list[int]) -> float:
    return round(sorted(micros)[len(micros) // 2] / 1000, 1) if micros else 0.0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def measure(
    server: RedisServer, admin: redis.Redis, label: str, action: Callable[[], Awaitable[Any]]
) -> dict[str, Any]:
    admin.slowlog_reset()
    started = time.monotonic()
    with Probe(server.port) as probe:
        result = asyncio.run(action())
    wall = time.monotonic() - started
    entries = [e for e in admin.slowlog_get(100_000) if b"slowlog" not in str(e["command"]).encode()]
    worst = max(entries, key=lambda e: e["duration"], default=None)
    row = {
        "operation": label,
        "max_command_ms": round(worst["duration"] / 1000, 1) if worst else 0.0,
        "worst_command": _text(worst["command"])[:70] if worst else "",
        "commands_over_50ms": sum(1 for e in entries if e["duration"] > 50_000),
        "median_slow_command_ms": _median_ms([e["duration"] for e in entries]),
        "commands_over_1ms": len(entries),
        "max_ping_ms": round(probe.worst * 1000, 1),
        "wall_s": round(wall, 1),
        "result": result,
    }
    print(json.dumps(row, default=str), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_block", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per state (default 100000)")
    parser.add_argument("--only", nargs="*", help="run only operations whose label starts with one of these")
    args = parser.parse_args(argv)
    n = args.jobs
    server = RedisServer(appendonly=False).start()
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        admin.config_set("slowlog-log-slower-than", 1000)
        admin.config_set("slowlog-max-len", 100_000)
        settings = Settings(redis_url=f"{server.url}/0", bullmq_prefix=PREFIX)
        queue = QUEUE_NAMES[KEY]
        rows = []

        def wanted(label: str) -> bool:
            return not args.only or any(label.startswith(o) for o in args.only)

        async def with_ops(call: Callable[[Ops], Awaitable[Any]]) -> Any:
            async with await Ops.open(settings) as ops:
                return await call(ops)

        def clean(state: str, dry: bool = False) -> Callable[[], Awaitable[Any]]:
            async def go() -> Any:
                results = await with_ops(lambda ops: ops.clean([KEY], state, 0, None, dry))
                return results[0].removed

            return go

        for state in ("completed", "failed", "delayed", "wait", "active", "prioritized", "paused"):
            if not wanted(f"clean {state}"):
                continue
            fill(admin, queue, state, n)
            rows.append(measure(server, admin, f"clean {state} --dry-run", clean(state, True)))
            rows.append(measure(server, admin, f"clean {state}", clean(state)))
        if wanted("retry"):
            fill(admin, queue, "failed", n)
            rows.append(measure(server, admin, "retry", lambda: with_ops(lambda ops: ops.retry([KEY]))))
            asyncio.run(clean("wait")())
        if wanted("promote"):
            fill(admin, queue, "delayed", n)
            rows.append(measure(server, admin, "promote", lambda: with_ops(lambda ops: ops.promote([KEY]))))
            asyncio.run(clean("wait")())
        if wanted("cancel"):
            fill(admin, queue, "wait", n)
            fill(admin, queue, "delayed", n, first=n + 1)
            step = max(1, n // 100)
            ids = [str(i) for i in range(1, n + 1, step)] + [str(n + i) for i in range(1, n + 1, step)]

            async def cancel_many() -> int:
                async def go(ops: Ops) -> int:
                    return sum([(await ops.cancel(KEY, job_id)).cancelled for job_id in ids])

                return await with_ops(go)

            rows.append(measure(server, admin, f"cancel x{len(ids)}", cancel_many))
            asyncio.run(clean("wait")())
            asyncio.run(clean("delayed")())
        if wanted("migrate"):
            legacy = LEGACY_QUEUE_NAMES[KEY]
            for i, state in enumerate(("wait", "delayed", "failed")):
                fill(admin, legacy, state, n, first=i * n + 1)

            async def migrate() -> Any:
                return (await migrate_legacy(settings)).moved

            rows.append(measure(server, admin, "migrate-legacy", migrate))
        print(json.dumps({"jobs_per_state": n, "rows": [{k: v for k, v in r.items() if k != "result"} for r in rows]}))
        admin.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
