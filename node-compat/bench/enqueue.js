// Node bullmq 6 addBulk rate for bullwait's benchmark (python -m bench starts it).
//   node enqueue.js '<json options>'
// options: {redisUrl, prefix, queue, n, chunk, delayMs, dueAtMs, spreadMs, first, jobOpts, ids, inFlight, out}
// Adds n check-expiry jobs (jobId expiry_<waitlistId>, the NestJS module's payload) with addBulk in
// chunks of `chunk`, `inFlight` addBulk calls at a time (default 1: each awaited before the
// next is built), then writes {seconds, n} to `out`. ids: "short" (w-1, slot-1, ...) or
// "uuid" (36-character ids, the same as bench/scenarios.py uuid_like), numbered from `first`
// (default 0). Job j is due `delayMs + spreadMs * j / n` after it is added (spreadMs default 0),
// or, with dueAtMs (epoch ms), at dueAtMs + spreadMs * j / n (bench/mass_expiry.py, as
// Producer.schedule_expiries does: expiresAt is the due time, the delay counted from now).
'use strict';
const fs = require('fs');
const { Queue } = require('bullmq');
const IORedis = require('ioredis');

const o = JSON.parse(process.argv[2]);

const uuidLike = (kind, i) => `${kind.toString(16).padStart(8, '0')}-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;
const ids = (j) => (o.ids === 'uuid'
  ? [uuidLike(1, j), uuidLike(2, j % 500), uuidLike(3, j), uuidLike(4, j % 200)]
  : [`w-${j}`, `slot-${j % 500}`, `cust-${j}`, `salon-${j % 200}`]);

async function main() {
  const connection = new IORedis(o.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(o.queue, { connection, prefix: o.prefix });
  await queue.waitUntilReady();
  const started = process.hrtime.bigint();
  const inFlight = o.inFlight || 1;
  const pending = [];
  const first = o.first || 0;
  const spreadMs = o.spreadMs || 0;
  for (let i = 0; i < o.n; i += o.chunk) {
    const now = new Date();
    const jobs = [];
    for (let j = i; j < Math.min(o.n, i + o.chunk); j++) {
      const offset = Math.floor((spreadMs * j) / o.n);
      const due = o.dueAtMs === undefined ? now.getTime() + o.delayMs + offset : o.dueAtMs + offset;
      const expires = new Date(due);
      const delay = o.dueAtMs === undefined ? o.delayMs + offset : Math.max(0, due - Date.now());
      const [waitlistId, slotId, customerId, salonId] = ids(first + j);
      jobs.push({
        name: 'check-expiry',
        data: {
          waitlistId,
          slotId,
          customerId,
          salonId,
          notifiedAt: now.toISOString(),
          expiresAt: expires.toISOString(),
        },
        opts: { ...o.jobOpts, jobId: `expiry_${waitlistId}`, delay },
      });
    }
    pending.push(queue.addBulk(jobs));
    if (pending.length >= inFlight) await pending.shift();
  }
  await Promise.all(pending);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  fs.writeFileSync(o.out, JSON.stringify({ runtime: 'node', n: o.n, seconds }));
  await queue.close();
  await connection.quit();
}

main().catch((err) => { console.error(err); process.exit(1); });
