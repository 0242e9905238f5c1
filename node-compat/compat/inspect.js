#!/usr/bin/env node
'use strict';
// What Node bullmq 6 sees on bullwait's queues, as JSON: job counts, workers, and given jobs.
//   node compat/inspect.js [--jobs QUEUE_KEY:id,id ...]
const { Queue } = require('bullmq');
const { loadConfig, runMain } = require('../lib/config');

async function main() {
  const config = loadConfig();
  const argv = process.argv.slice(2);
  const wanted = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--jobs') {
      const [key, ids] = argv[++i].split(':');
      wanted[key] = ids.split(',');
    }
  }
  const out = {};
  for (const q of config.queues) {
    const queue = new Queue(q.active, { connection: config.connection, prefix: config.prefix, skipMetasUpdate: true });
    try {
      const workers = await queue.getWorkers();
      const entry = {
        name: q.active,
        counts: await queue.getJobCounts(),
        workers: workers.map((w) => ({ name: w.name, rawname: w.rawname, addr: w.addr })),
        jobs: {},
      };
      for (const id of wanted[q.key] || []) {
        const job = await queue.getJob(id);
        entry.jobs[id] = job ? { ...job.toJSON(), state: await job.getState() } : null;
      }
      out[q.key] = entry;
    } finally {
      await queue.close();
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  return 0;
}

runMain('inspect', main);
