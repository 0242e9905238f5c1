"""A Redis PING probe in its own process (started by bench/mass_expiry.py, not for direct use).

    python -m bench.probe '<json options>'

options: redisUrl, intervalMs, out. PINGs every `intervalMs` on its own connection, prints
"ready", and on SIGTERM writes `out`: {"samples": [[wall time s, round trip ms], ...]}.

Its own process, so a producer or worker running in the bench's process never holds it up:
what it sees is what another application on the same Redis would feel (Redis busy with a
long command or MULTI block, or the machine too busy to run either of them promptly).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import redis


def run(o: dict[str, Any]) -> int:
    client = redis.Redis.from_url(o["redisUrl"], socket_timeout=30)
    client.ping()
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    interval = float(o.get("intervalMs", 5)) / 1000
    samples: list[tuple[float, float]] = []
    print("ready", flush=True)
    while not stop[0]:
        at = time.time()
        t0 = time.perf_counter()
        client.ping()
        samples.append((round(at, 4), round((time.perf_counter() - t0) * 1000, 3)))
        time.sleep(interval)
    client.close()
    with open(o["out"], "w") as fh:
        json.dump({"samples": samples}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
