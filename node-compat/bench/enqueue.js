// Node bullmq 6 addBulk rate for bullwait's benchmark (python -m bench starts it).
//   node enqueue.js '<json options>'
// options: {redisUrl, prefix, queue, n, chunk, delayMs, jobOpts, out}
// Adds n check-expiry jobs (jobId expiry_<prefix>-<i>, the seed's payload) with addBulk in
// chunks of `chunk`, then writes {seconds, n} to `out`.
'use strict';
const fs = require('fs');
const { Queue } = require('bullmq');
const IORedis = require('ioredis');

const o = JSON.parse(process.argv[2]);

async function main() {
  const connection = new IORedis(o.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(o.queue, { connection, prefix: o.prefix });
  await queue.waitUntilReady();
  const started = process.hrtime.bigint();
  for (let i = 0; i < o.n; i += o.chunk) {
    const now = new Date();
    const expires = new Date(now.getTime() + o.delayMs);
    const jobs = [];
    for (let j = i; j < Math.min(o.n, i + o.chunk); j++) {
      jobs.push({
        name: 'check-expiry',
        data: {
          waitlistId: `w-${j}`,
          slotId: `slot-${j % 500}`,
          customerId: `cust-${j}`,
          salonId: `salon-${j % 200}`,
          notifiedAt: now.toISOString(),
          expiresAt: expires.toISOString(),
        },
        opts: { ...o.jobOpts, jobId: `expiry_w-${j}`, delay: o.delayMs },
      });
    }
    await queue.addBulk(jobs);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  fs.writeFileSync(o.out, JSON.stringify({ runtime: 'node', n: o.n, seconds }));
  await queue.close();
  await connection.quit();
}

main().catch((err) => { console.error(err); process.exit(1); });
