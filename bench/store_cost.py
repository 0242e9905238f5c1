"""Worker-side cost of one waitlist store call, through the client's pool or an AutoPipeline.

    python -m bench.store_cost [--calls N] [--mode plain|pipe|both]

Starts its own redis-server (free port), then `--callers` tasks call `store.expire` on
entries that do not exist, as the mass-expiry bench's real `check-expiry` does, and prints
the process CPU per call. For instruction counts, which a loaded machine does not move,
run one mode under valgrind twice and subtract:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python -m bench.store_cost --mode pipe --calls 2000
    (the "Collected" line of --calls 2000 minus that of --calls 0, over 2000: per call)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bullwait.dev.embedded import RedisServer
from bullwait.engine.autopipeline import AutoPipeline
from bullwait.engine.connection import redis_client
from bullwait.settings import Settings
from bullwait.waitlist.store import RedisWaitlistStore


async def measure(url: str, pipelined: bool, calls: int, callers: int) -> float:
    """CPU seconds per call (process time: this process only, not Redis)."""
    client = redis_client(Settings(redis_url=url, bullwait_store_prefix="cost:"))
    store = RedisWaitlistStore(client, "cost:", pipeline=AutoPipeline(client) if pipelined else None)
    await store.expire("salon", "warm-up", "slot", 1, 2)  # connections, script load
    per_caller = calls // callers

    async def caller(c: int) -> None:
        for i in range(per_caller):
            await store.expire(f"salon-{c}", f"w-{i}", "slot", 1, 2)

    begin = time.process_time()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    spent = time.process_time() - begin
    await store.close()
    return spent / max(per_caller * callers, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=5, help="concurrent callers (the expiry queue's concurrency)")
    parser.add_argument("--mode", choices=["plain", "pipe", "both"], default="both")
    args = parser.parse_args()
    modes = ["plain", "pipe"] if args.mode == "both" else [args.mode]
    server = RedisServer(appendonly=False).start()
    try:
        for mode in modes:
            per_call = asyncio.run(measure(f"{server.url}/0", mode == "pipe", args.calls, args.callers))
            print(f"{mode}: {args.calls} calls, {per_call * 1e6:.1f} us CPU per call")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
