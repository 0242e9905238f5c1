"""`python -m bench [--quick] [--only SECTION ...]`: bullwait vs Node bullmq 6 on one private Redis.

Starts its own redis-server (bullwait.dev.embedded.RedisServer, free port, AOF off, stock
config; `hz` is set per timer run; the cluster section starts a local 3-master cluster of its
own), runs each section, prints a table and writes bench/results/<UTC timestamp>.json. Never
touches any other Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench import cluster, growth, mass_expiry, scenarios
from bench.report import render
from bullwait.dev.embedded import RedisServer

SECTIONS = {
    "timers": scenarios.timers,
    "expiry": mass_expiry.mass_expiry,
    "throughput": scenarios.throughput,
    "enqueue": scenarios.enqueue_and_memory,
    "notify": scenarios.notifications,
    "cluster": cluster.cluster,
    "growth": growth.growth,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="LABEL",
        help='throughput: run only these runtimes (e.g. bullwait bare node; "bullwait x2 processes"); '
        "notify: only these runs (sweep perSalon manySalons)",
    )
    parser.add_argument(
        "--sizes", nargs="+", type=int, metavar="N", help="growth: these numbers of pending timers (e.g. 2000 20000)"
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="expiry: interleaved rounds per runtime (full: 3)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    server = RedisServer(appendonly=False).start()
    try:
        client = redis.Redis(port=server.port, decode_responses=True)
        b = scenarios.Bench(
            url=f"{server.url}/0",
            quick=args.quick,
            client=client,
            redis_pid=server.process.pid if server.process else None,
            variants=tuple(args.variants) if args.variants else None,
            sizes=tuple(args.sizes) if args.sizes else None,
            rounds=args.rounds,
        )
        info = client.info("server")
        results: dict = {
            "startedAt": datetime.now(UTC).isoformat(),
            "quick": args.quick,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "redis": {"version": info["redis_version"], "hzDefault": 10},
            "node": _node_version(),
            "loadAverage": os.getloadavg()[0],  # a busy machine moves jobs/s more than CPU per job
        }
        for name in args.only or list(SECTIONS):
            log(f"section {name}")
            results[name] = SECTIONS[name](b, log)
        results["seconds"] = round(time.monotonic() - started, 1)
    finally:
        server.cleanup()
    print(render(results))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / (datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + (".quick" if args.quick else "") + ".json")
    path.write_text(json.dumps(results, indent=2, default=str))
    print(
        f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path} ({results['seconds']}s)"
    )
    return 0


def _node_version() -> str | None:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
