"""Node bullmq 6 writes the jobs; `bullwait stats --json` must equal Node's own getJobCounts.

Skipped when node-compat/node_modules is absent (run `npm ci` there, or `bash dev.sh test`).
"""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.nodecompat import NODE_DIR as NODE_COMPAT
from helpers.nodecompat import node_required

pytestmark = node_required

# Jobs in every state written by Node bullmq, a paused queue, and a named Node worker on
# the (empty) preference queue. Prints Node's counts, then waits until stdin closes.
NODE_SCRIPT = r"""
const { Queue, Worker } = require('bullmq');
const [host, port, prefix, qExpiry, qNote, qPref] = process.argv.slice(1);
const connection = { host, port: Number(port), db: 0 };
(async () => {
  const expiry = new Queue(qExpiry, { connection, prefix });
  const note = new Queue(qNote, { connection, prefix });
  const pref = new Queue(qPref, { connection, prefix });
  const taker = new Worker(qExpiry, null, { connection, prefix, autorun: false });
  for (const [i, outcome] of ['completed', 'failed', 'failed', 'active'].entries()) {
    await expiry.add('check-expiry', { waitlistId: `n${i}` }, { jobId: `expiry_n${i}`, attempts: 1 });
    const job = await taker.getNextJob('tok' + i);
    if (outcome === 'completed') await job.moveToCompleted('ok', 'tok' + i, false);
    if (outcome === 'failed') await job.moveToFailed(new Error('node says no'), 'tok' + i, false);
  }
  for (let i = 0; i < 3; i++) await expiry.add('check-expiry', { i }, { jobId: `expiry_w${i}` });
  for (let i = 0; i < 2; i++) await expiry.add('check-expiry', { i }, { jobId: `expiry_p${i}`, priority: 5 });
  for (let i = 0; i < 4; i++) await expiry.add('check-expiry', { i }, { jobId: `expiry_d${i}`, delay: 900000 });
  await note.pause();
  for (let i = 0; i < 2; i++) await note.add('send-slot-available', { i });
  const worker = new Worker(qPref, async () => null, { connection, prefix, name: 'nest-1' });
  await worker.waitUntilReady();
  const out = {};
  for (const q of [expiry, note, pref]) {
    out[q.name] = { counts: await q.getJobCounts(), workers: await q.getWorkersCount(), paused: await q.isPaused() };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.stdin.resume();
  process.stdin.on('end', async () => {
    await worker.close(); await taker.close();
    await Promise.all([expiry.close(), note.close(), pref.close()]);
    process.exit(0);
  });
})().catch(err => { console.error(err); process.exit(1); });
"""


def test_stats_equals_node_getjobcounts(settings: Settings, env: dict[str, str], start_worker) -> None:
    url = urlsplit(env["REDIS_URL"])
    names = [
        queue_name(k, settings)
        for k in (QueueKey.WAITLIST_EXPIRY, QueueKey.WAITLIST_NOTIFICATION, QueueKey.PREFERENCE_CALCULATION)
    ]
    # A Python worker next to the Node one on the (empty) preference queue: two workers, one each.
    start_worker("--queue", names[2])
    node = subprocess.Popen(
        ["node", "-e", NODE_SCRIPT, str(url.hostname), str(url.port), settings.bullmq_prefix, *names],
        cwd=NODE_COMPAT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = node.stdout.readline()  # type: ignore[union-attr]
        assert line, node.stderr.read()  # type: ignore[union-attr]
        from_node = json.loads(line)
        result = invoke_cli(env, "stats", "--json")
        assert result.returncode == 0, result.stderr
        rows = {r["name"]: r for r in json.loads(result.stdout)}
    finally:
        node.stdin.close()  # type: ignore[union-attr]
        node.wait(30)
    for name, node_view in from_node.items():
        row = rows[name]
        counts = node_view["counts"]
        for field in ("waiting", "active", "completed", "failed", "delayed", "prioritized"):
            assert row[field] == counts[field], (name, field, row, counts)
        assert row["waiting_children"] == counts["waiting-children"]
        assert row["paused"] == node_view["paused"]
        assert row["workers"] == node_view["workers"], (name, row, node_view)
    expiry = rows[names[0]]
    assert (
        expiry["waiting"],
        expiry["prioritized"],
        expiry["delayed"],
        expiry["completed"],
        expiry["failed"],
        expiry["active"],
    ) == (3, 2, 4, 1, 2, 1)
    assert rows[names[1]]["paused"] is True and rows[names[1]]["waiting"] == 2
    assert (rows[names[2]]["workers"], rows[names[2]]["workers_node"], rows[names[2]]["workers_python"]) == (2, 1, 1)
    assert expiry["meta_version"] == "bullmq:6.7.0"
    doctor = invoke_cli(env, "doctor", "--queue", names[0])
    line = next(ln for ln in doctor.stdout.splitlines() if "/bullmq-version" in ln)
    assert line.startswith("ok") and "bullmq:6.7.0 pairs with bullmq-py" in line
    show = json.loads(invoke_cli(env, "jobs", "show", names[0], "expiry_n1", "--json").stdout)
    assert (
        show["failed_reason"] == "node says no"
        and show["stacktrace"]
        and "Error: node says no" in show["stacktrace"][0]
    )
