"""One queue reader: `stats --json`, `doctor --json`, the /metrics gauges and /health/queues
show the same counts for every queue, and they equal Node bullmq 6's getJobCounts and isPaused.

The queues hold jobs in every state (helpers.ops_states), a queue paused by bullmq-py whose
`meta.paused` was then hand-set to "0" (Node reads the flag by the field's presence), and a
queue a Node bullmq 4 producer paused, which moved its jobs and a legacy `0:` delay marker
into the `paused` list (Node 6 counts that list as `paused`, not `waiting`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.common import BULLWAIT, ROOT, run_cli, wait_until
from helpers.monitoring import health, listening, scrape, value
from helpers.nodecompat import NODE, NODE_DIR, node_required
from helpers.ops_states import populate

pytestmark = node_required

COUNTS = ("waiting", "active", "completed", "failed", "delayed", "prioritized", "waiting-children")

# Node bullmq 4 adds a delayed job (which leaves a `0:` marker in the empty wait list) and two
# waiting jobs, then pauses the queue: its pause renames the wait list to `paused`.
NODE4_PAUSE = r"""
const { Queue } = require('bullmq4');
const [host, port, prefix, name] = process.argv.slice(1);
(async () => {
  const q = new Queue(name, { connection: { host, port: Number(port), db: 0 }, prefix });
  await q.add('calculate-preferences', { i: 2 }, { jobId: 'pref-late', delay: 3600000 });
  await q.add('calculate-preferences', { i: 0 }, { jobId: 'pref-0' });
  await q.add('calculate-preferences', { i: 1 }, { jobId: 'pref-1' });
  await q.pause();
  await q.close();
})().catch(err => { console.error(err); process.exit(1); });
"""

# Node bullmq 6's own view of each queue.
NODE6_COUNTS = r"""
const { Queue } = require('bullmq');
const [host, port, prefix, ...names] = process.argv.slice(1);
(async () => {
  const out = {};
  for (const name of names) {
    const q = new Queue(name, { connection: { host, port: Number(port), db: 0 }, prefix });
    out[name] = {
      counts: await q.getJobCounts(),
      pausedList: (await q.getJobCounts('paused')).paused,
      paused: await q.isPaused(),
      workers: await q.getWorkersCount(),
    };
    await q.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch(err => { console.error(err); process.exit(1); });
"""


def node(script: str, env: dict[str, str], prefix: str, *names: str) -> str:
    url = urlsplit(env["REDIS_URL"])
    proc = subprocess.run(
        [NODE or "node", "-e", script, str(url.hostname), str(url.port), prefix, *names],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def serve(env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """`bullwait serve` on a free port (METRICS_PORT=0 in the test env); yields the port."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*BULLWAIT, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:

            def ready() -> bool:
                assert proc.poll() is None, log_path.read_text(errors="replace")
                return "monitoring server listening" in log_path.read_text(errors="replace")

            wait_until(ready, message="bullwait serve to listen")
            yield int(listening(log_path.read_text(errors="replace"))["port"])
        finally:
            proc.terminate()
            proc.wait(15)


def doctor_view(env: dict[str, str], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per queue what `doctor --json` says: paused (its check warns), failed count, workers."""
    checks = {c["name"]: c for c in json.loads(run_cli(env, "doctor", "--json").stdout)["checks"]}
    view = {}
    for name in names:
        failed = re.match(r"(\d+) failed", checks[f"{name}/failed"]["detail"])
        assert failed, checks[f"{name}/failed"]
        workers = checks[f"{name}/workers"]
        view[name] = {
            "paused": checks[f"{name}/paused"]["status"] == "warn",
            "failed": int(failed.group(1)),
            "workers": 0 if workers["detail"].startswith("no worker") else int(workers["detail"].split()[0]),
        }
    return view


async def test_stats_doctor_metrics_health_and_node_agree(
    settings: Settings, env: dict[str, str], sync_redis: Any, serve: int
) -> None:
    prefix = settings.bullmq_prefix
    pop = await populate(settings, sync_redis)
    prefs = queue_name(QueueKey.PREFERENCE_CALCULATION, settings)
    names = [queue_name(k, settings) for k in QueueKey]
    # Paused by bullmq-py, then the flag's value hand-set: the field is there, so Node says paused.
    sync_redis.hset(f"{prefix}:{pop.notification}:meta", "paused", "0")
    node(NODE4_PAUSE, env, prefix, prefs)
    assert sync_redis.llen(f"{prefix}:{prefs}:paused") == 3  # two jobs and the delay marker

    stats = {r["name"]: r for r in json.loads(run_cli(env, "stats", "--json").stdout)}
    doctor = doctor_view(env, names)
    samples = scrape(serve)
    status, doc = health(serve)
    assert status == 503, doc  # jobs and no worker
    healthy = {q["name"]: q for q in doc["queues"]}
    # Node last: its getCounts drops the legacy marker it finds (RPOP).
    from_node = json.loads(node(NODE6_COUNTS, env, prefix, *names))

    for name in names:
        want = from_node[name]
        counts = want["counts"]
        row, h = stats[name], healthy[name]
        for state in COUNTS:
            field = state.replace("-", "_")
            assert row[field] == counts[state], (name, state, row, counts)
            assert value(samples, "bullmq_job_count", queue=name, state=state) == counts[state], (name, state)
            if state != "waiting-children":
                assert h[state] == counts[state], (name, state, h, counts)
                assert value(samples, f"bullmq_jobs_{state}", queue=name) == counts[state], (name, state)
        assert row["paused_list"] == want["pausedList"], (name, row)
        assert row["paused"] is h["paused"] is doctor[name]["paused"] is want["paused"], (name, row, h, doctor[name])
        assert value(samples, "bullmq_queue_paused", queue=name) == int(want["paused"]), name
        assert doctor[name]["failed"] == counts["failed"], name
        assert row["workers"] == h["workers"] == doctor[name]["workers"] == want["workers"] == 0, name
        assert value(samples, "bullmq_queue_workers", queue=name) == 0, name

    # The states were really there, so the agreement above means something.
    expiry = stats[pop.expiry]
    assert [expiry[f] for f in ("waiting", "prioritized", "delayed", "active", "completed", "failed")] == [
        4,
        2,
        6,
        2,
        2,
        3,
    ]
    assert stats[pop.notification]["paused"] is True and stats[pop.notification]["waiting"] == 3
    assert stats[prefs]["paused"] is True and stats[prefs]["waiting"] == 0 and stats[prefs]["paused_list"] == 2
    assert stats[prefs]["delayed"] == 1
