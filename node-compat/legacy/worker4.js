#!/usr/bin/env node
'use strict';
// A Node bullmq 4.18 Worker on a legacy (colon-named) queue: the NestJS module's old workers, for the
// migration tests. Either fails every job (--fail <message>) or takes one job and holds it
// active (--hold) until SIGTERM.
//   node legacy/worker4.js <QUEUE_KEY> --fail "whatsapp down" | --hold
const { Worker } = require('bullmq4');
const { loadConfig, runMain, ConfigError } = require('../lib/config');

async function main() {
  const [key, mode, message] = process.argv.slice(2);
  const config = loadConfig();
  const name = config.catalog.legacyQueueNames[key];
  if (!name) throw new ConfigError(`unknown queue key ${JSON.stringify(key)}`);
  if (mode !== '--fail' && mode !== '--hold') throw new ConfigError('usage: worker4.js <QUEUE_KEY> --fail <message> | --hold');
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  const worker = new Worker(
    name,
    async (job) => {
      if (mode === '--fail') throw new Error(message || 'failed by worker4');
      process.stdout.write(`holding ${job.id}\n`);
      await held;
    },
    { connection: config.connection, prefix: config.prefix, concurrency: 1 },
  );
  worker.on('error', (err) => process.stderr.write(`legacy worker error: ${err.message}\n`));
  worker.on('failed', (job, err) => process.stdout.write(`failed ${job && job.id}: ${err.message}\n`));
  await worker.waitUntilReady();
  process.stdout.write(`legacy worker ready on ${name}\n`);
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  // Leave a held job active, as a crashed or still-running legacy deployment would.
  await worker.close(mode === '--hold');
  release();
  return 0;
}

runMain('worker4', main);
