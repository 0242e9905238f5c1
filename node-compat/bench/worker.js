// Node bullmq 6 side of bullwait's benchmark (python -m bench starts it; not for direct use).
//   node worker.js '<json options>'
// options: {redisUrl, prefix, queue, concurrency, mode: "timers"|"throughput"|"notify", out}
// Prints "ready" once connected; on SIGTERM closes gracefully, writes `out` (JSON) and exits 0.
// timers: records lateness = processor start - (job.timestamp + job.opts.delay), in ms.
'use strict';
const fs = require('fs');
const { Worker } = require('bullmq');
const IORedis = require('ioredis');

const o = JSON.parse(process.argv[2]);
const connection = new IORedis(o.redisUrl, { maxRetriesPerRequest: null });
const lateness = [];
let processed = 0;

async function processor(job) {
  processed += 1;
  if (o.mode === 'timers') {
    lateness.push(Date.now() - (job.timestamp + (job.opts.delay || 0)));
  }
  return null;
}

const worker = new Worker(o.queue, processor, {
  connection,
  prefix: o.prefix,
  concurrency: o.concurrency,
  autorun: false,
});
worker.on('error', (err) => console.error('worker error', err.message));

async function main() {
  await worker.waitUntilReady();
  worker.run();
  process.stdout.write('ready\n');
}

let stopping = false;
process.on('SIGTERM', async () => {
  if (stopping) return;
  stopping = true;
  await worker.close();
  fs.writeFileSync(o.out, JSON.stringify({ runtime: 'node', processed, lateness }));
  await connection.quit();
  process.exit(0);
});

main().catch((err) => { console.error(err); process.exit(1); });
