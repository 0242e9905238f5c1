#!/usr/bin/env node
'use strict';
// Node side of the Sentinel failover proof: Node bullmq 6 on ioredis through the same Sentinel failover as
// bullwait (tests/sentinel/test_sentinel_failover_load.py starts it; it asserts that this run finished
// with its load added, and prints Node's losses without bounding them: Node has no WAIT here).
// ioredis as a Node app would configure it: { sentinels, name, failoverDetector: true }.
//   env: SENTINELS=host:port,... SENTINEL_MASTER NODE_PREFIX TIMERS DUE_MS PRODUCE_MS LOOP_MS
//        IDLE_MS LOCK_MS STALLED_MS CONCURRENCY
// Bulk-adds TIMERS delayed jobs due over DUE_MS, prints "node load added", adds one job every
// LOOP_MS for PRODUCE_MS (recording the adds it was told succeeded), then waits until every
// confirmed job ran (or nothing ran for IDLE_MS) and prints one line: RESULT {json}.
// Runs are counted in this process, not in Redis, which the failover can roll back.
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');

const env = process.env;
const num = (name) => Number(env[name]);
const sentinels = env.SENTINELS.split(',').map((hp) => {
  const [host, port] = hp.split(':');
  return { host, port: Number(port) };
});
const connect = () => new IORedis({
  sentinels, name: env.SENTINEL_MASTER, failoverDetector: true, maxRetriesPerRequest: null,
});
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const QUEUE = 'waitlist-expiry';

async function main() {
  const prefix = env.NODE_PREFIX;
  const runs = new Map();
  let lastRun = Date.now();
  let switchAt = null;
  let firstAfterSwitch = null;
  const errors = {};
  const count = (err) => { const k = String(err && err.message || err).slice(0, 60); errors[k] = (errors[k] || 0) + 1; };

  // When the sentinels announce the switch (what failoverDetector reacts to), for the timing.
  const watcher = new IORedis({ host: sentinels[0].host, port: sentinels[0].port, maxRetriesPerRequest: null });
  watcher.on('error', () => {});
  await watcher.subscribe('+switch-master');
  watcher.on('message', () => { if (switchAt === null) switchAt = Date.now(); });

  const producerConn = connect();
  const workerConn = connect();
  for (const c of [producerConn, workerConn]) c.on('error', count);
  const queue = new Queue(QUEUE, { connection: producerConn, prefix });
  queue.on('error', count);
  const worker = new Worker(QUEUE, async (job) => {
    runs.set(job.id, (runs.get(job.id) || 0) + 1);
    lastRun = Date.now();
    return { ran: true };
  }, {
    connection: workerConn, prefix, concurrency: num('CONCURRENCY'),
    lockDuration: num('LOCK_MS'), stalledInterval: num('STALLED_MS'),
  });
  worker.on('error', count);
  worker.on('completed', () => {
    if (switchAt !== null && firstAfterSwitch === null) firstAfterSwitch = Date.now();
  });

  const timers = [];
  const due = num('DUE_MS');
  for (let start = 0; start < num('TIMERS'); start += 500) {
    const jobs = [];
    for (let i = start; i < Math.min(start + 500, num('TIMERS')); i++) {
      const delay = Math.floor(1000 + ((due - 1000) * i) / num('TIMERS'));
      jobs.push({ name: 'check-expiry', data: { i }, opts: { jobId: `t${i}`, delay } });
    }
    await queue.addBulk(jobs);
    timers.push(...jobs.map((j) => j.opts.jobId));
  }
  process.stdout.write('node load added\n');

  const confirmed = [];
  const refused = {};
  const produceUntil = Date.now() + num('PRODUCE_MS');
  for (let n = 1; Date.now() < produceUntil; n++) {
    try {
      const job = await queue.add('check-expiry', { n }, { jobId: `l${n}`, delay: 300 });
      confirmed.push(job.id);
    } catch (err) {
      const k = String(err && err.message || err).slice(0, 60);
      refused[k] = (refused[k] || 0) + 1;
    }
    await sleep(num('LOOP_MS'));
  }

  const expected = [...timers, ...confirmed];
  lastRun = Math.max(lastRun, Date.now());
  while (expected.some((id) => !runs.get(id)) && Date.now() - lastRun < num('IDLE_MS')) await sleep(200);

  // The count is this script's bookkeeping, not Node bullmq's behaviour under test: a read cut by
  // the failover detector's reconnect ("Connection is closed.") is asked again.
  const getJob = async (id) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await queue.getJob(id);
      } catch (err) {
        if (attempt >= 20) throw err;
        count(err);
        await sleep(250);
      }
    }
  };
  const lost = [];
  for (const id of confirmed) {
    if (!runs.get(id) && !(await getJob(id))) lost.push(id);
  }
  const result = {
    timers: timers.length,
    confirmed: confirmed.length,
    refused,
    confirmed_lost: lost.length,
    never_run: expected.filter((id) => !runs.get(id)).length,
    ran_twice: [...runs.values()].filter((n) => n > 1).length,
    switch_to_first_completion_s: switchAt && firstAfterSwitch ? (firstAfterSwitch - switchAt) / 1000 : null,
    errors: Object.keys(errors).length,
  };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  await Promise.race([Promise.all([worker.close(), queue.close()]), sleep(5000)]);
  for (const c of [producerConn, workerConn, watcher]) c.disconnect();
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`sentinel_load failed: ${err && err.stack || err}\n`);
  process.exit(1);
});
