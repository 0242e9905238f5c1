#!/usr/bin/env node
'use strict';
// A Node bullmq 6 Worker on one of bullwait's queues, for the cross-runtime suite.
//   node compat/worker.js <QUEUE_KEY> [--concurrency N] [--fail-ids a,b] [--record]
//                         [--stalled-interval MS] [--lock-duration MS] [--print-runs]
// Returns {by: "node", name, id, data, opts} for each job; throws "node refused <id>" for ids in
// --fail-ids; with --record, RPUSHes each processed id to <prefix>:compat:node-processed.
// With --print-runs, prints "run <id> <epoch ms>" as each processor call starts and "done <id>
// <epoch ms>" once Redis took the completion: a record outside Redis, which a failover can lose.
// Prints "node worker ready" once it is connected; SIGTERM closes it gracefully.
const { Worker } = require('bullmq');
const { loadConfig, createRedis, runMain, ConfigError } = require('../lib/config');

function parseArgs(argv) {
  const out = { concurrency: 10, failIds: new Set(), record: false, name: 'node-compat' };
  out.queueKey = argv[0];
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] === '--concurrency') out.concurrency = Number(argv[++i]);
    else if (argv[i] === '--fail-ids') out.failIds = new Set(argv[++i].split(',').filter(Boolean));
    else if (argv[i] === '--record') out.record = true;
    else if (argv[i] === '--print-runs') out.printRuns = true;
    else if (argv[i] === '--name') out.name = argv[++i];
    else if (argv[i] === '--stalled-interval') out.stalledInterval = Number(argv[++i]);
    else if (argv[i] === '--lock-duration') out.lockDuration = Number(argv[++i]);
    else throw new ConfigError(`unknown argument ${argv[i]}`);
  }
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const config = loadConfig();
  const queueName = config.queueNames[args.queueKey];
  if (!queueName) throw new ConfigError(`unknown queue key ${JSON.stringify(args.queueKey)}`);
  const recorder = args.record ? createRedis(config.redis) : null;
  const recordKey = `${config.prefix}:compat:node-processed`;
  const worker = new Worker(
    queueName,
    async (job) => {
      if (args.printRuns) process.stdout.write(`run ${job.id} ${Date.now()}\n`);
      if (args.failIds.has(job.id)) throw new Error(`node refused ${job.id}`);
      if (recorder) await recorder.rpush(recordKey, job.id);
      return { by: 'node', name: job.name, id: job.id, data: job.data, opts: job.opts, attemptsMade: job.attemptsMade };
    },
    {
      connection: config.connection, prefix: config.prefix, concurrency: args.concurrency, name: args.name,
      ...(args.stalledInterval ? { stalledInterval: args.stalledInterval } : {}),
      ...(args.lockDuration ? { lockDuration: args.lockDuration } : {}),
    },
  );
  worker.on('stalled', (jobId) => process.stdout.write(`node job stalled ${jobId}\n`));
  if (args.printRuns) worker.on('completed', (job) => process.stdout.write(`done ${job.id} ${Date.now()}\n`));
  worker.on('error', (err) => process.stderr.write(`node worker error: ${err.message}\n`));
  await worker.waitUntilReady();
  process.stdout.write(`node worker ready on ${queueName}\n`);
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await worker.close();
  if (recorder) await recorder.quit();
  return 0;
}

runMain('compat-worker', main);
