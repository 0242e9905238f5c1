#!/usr/bin/env node
'use strict';
// Adds jobs through Node bullmq 6's Queue.add, as a NestJS producer would, with any options.
//   node compat/add.js <QUEUE_KEY> '[{"name": "...", "data": {...}, "opts": {...}}, ...]'
// In opts, the strings "Infinity", "-Infinity" and "NaN" stand for those numbers (JSON has
// none). Prints [{"id": ..., "error": ...}] (error when Node refused the add).
const { Queue } = require('bullmq');
const { loadConfig, runMain, ConfigError } = require('../lib/config');

const NUMBERS = { Infinity: Infinity, '-Infinity': -Infinity, NaN: NaN };

function revive(_key, value) {
  return typeof value === 'string' && value in NUMBERS ? NUMBERS[value] : value;
}

async function main() {
  const [key, raw] = process.argv.slice(2);
  const config = loadConfig();
  const spec = config.queues.find((q) => q.key === key);
  if (!spec) throw new ConfigError(`unknown queue key ${JSON.stringify(key)}`);
  const jobs = JSON.parse(raw || '[]');
  const queue = new Queue(spec.active, { connection: config.connection, prefix: config.prefix, skipMetasUpdate: true });
  const out = [];
  try {
    for (const job of jobs) {
      const opts = JSON.parse(JSON.stringify(job.opts || {}), revive);
      try {
        const added = await queue.add(job.name, job.data, opts);
        out.push({ id: added.id });
      } catch (err) {
        out.push({ error: String((err && err.message) || err).split('\n')[0] });
      }
    }
  } finally {
    await queue.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  return 0;
}

runMain('add.js', main);
