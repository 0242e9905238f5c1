"""Poison options written by a real Node bullmq 6 producer (items 2 and 3).

Node's Queue.add accepts `attempts: "3"` (its worker compares it as the number 3), `attempts:
"abc"`, a backoff delay that is not a number and `delay: "abc"`; it refuses Infinity and NaN
(its script cannot serialise them). A Python worker retries `"3"` as 3 attempts, as Node
would, and fails the others once, naming the option (or the hash field Node copied it to).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from helpers.jobdata import expiry_data
from helpers.nodecompat import node_json, node_required
from helpers.reliability import COUNTING, eventually

pytestmark = node_required

QUEUE = "waitlist-expiry"
FAILING = dict(expiry_data(), failAlways=True)

# (options as the Node producer passes them, words the failedReason must hold, attempts made)
CASES: list[tuple[dict[str, Any], list[str], int]] = [
    ({"attempts": "3"}, ["asked to fail"], 3),
    ({"attempts": "abc"}, ["opts.attempts is 'abc'", "not retried", "asked to fail"], 1),
    ({"attempts": 3, "backoff": {"type": "fixed", "delay": "soon"}}, ["opts.backoff"], 1),
    ({"attempts": "2", "delay": "abc"}, ["delay is 'abc', not an integer"], 1),  # Node copies it to the hash
]


async def test_node_written_poison_options_fail_once(
    env: dict[str, str], start_worker: Any, sync_redis: redis.Redis, prefix: str
) -> None:
    jobs = [{"name": "check-expiry", "data": FAILING, "opts": opts} for opts, _words, _atm in CASES]
    refused = [{"name": "check-expiry", "data": FAILING, "opts": {"attempts": v}} for v in ("Infinity", "NaN")]
    added = node_json(env, "compat/add.js", "WAITLIST_EXPIRY", jobs + refused)
    assert all("id" in a for a in added[: len(CASES)]), added
    for outcome in added[len(CASES) :]:  # Node cannot store them: nothing for a worker to loop on
        assert "NaN or Inf" in outcome.get("error", ""), outcome
    ids = [a["id"] for a in added[: len(CASES)]]
    assert sync_redis.hget(f"{prefix}:{QUEUE}:{ids[3]}", "delay") == "abc"

    worker = start_worker("--queue", "expiry", extra_env=COUNTING)

    async def all_failed() -> bool:
        return sync_redis.zcard(f"{prefix}:{QUEUE}:failed") == len(CASES)

    await eventually(all_failed, timeout=25, message="every Node-written poison job failed")
    for job_id, (opts, words, atm) in zip(ids, CASES):
        stored = sync_redis.hgetall(f"{prefix}:{QUEUE}:{job_id}")
        for word in words:
            assert word in stored.get("failedReason", ""), (opts, word, stored.get("failedReason"))
        assert stored.get("atm") == str(atm), (opts, stored.get("atm"))
        assert stored.get("stc") in (None, "0"), (opts, "stalled")
        assert json.loads(stored["opts"]) == opts, "the stored options are left as the producer wrote them"
    assert sync_redis.llen(f"{prefix}:{QUEUE}:active") == 0
    log = worker.log()
    assert "Traceback" not in log and "job stalled" not in log
    assert worker.terminate() == 0
