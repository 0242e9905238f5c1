#!/usr/bin/env node
'use strict';
// Boots the NestJS application context and calls one of the NestJS module's producers, printing
// its result as JSON on stdout. Used by the compatibility suite and handy by hand:
//   node nest/produce.js notifyWaitlistCustomer '{"waitlistEntry": {...}, "slot": {...}}'
//   node nest/produce.js sendSlotAvailableNotification '{"waitlistEntry": {...}, "slot": {...}}'
//   node nest/produce.js calculatePreferencesAfterBooking '{"customerId": "c-1", "booking": {...}}'
//   node nest/produce.js cancelExpiryTimer '{"waitlistId": "w-1"}'
//   node nest/produce.js getQueueStats
//   node nest/produce.js batch '[{"action": "...", "args": {...}}, ...]'
//   node nest/produce.js serve    one long-lived app: reads {"action", "args"} JSON lines on stdin,
//                                 answers each with {"result": ...} or {"error": "..."} on stdout
// (serve shows that one running NestJS app keeps producing across a Redis failover).
require('reflect-metadata');
const readline = require('node:readline');
const { NestFactory } = require('@nestjs/core');
const { loadConfig, runMain, ConfigError } = require('../lib/config');
const { buildNotificationQueueModule } = require('./notification-queue.module');

const ACTIONS = {
  notifyWaitlistCustomer: (s, a) => s.notifyWaitlistCustomer(a.waitlistEntry, a.slot, a.delayMs).then((jobId) => ({ jobId })),
  sendSlotAvailableNotification: (s, a) => s.sendSlotAvailableNotification(a.waitlistEntry, a.slot).then((jobId) => ({ jobId })),
  calculatePreferencesAfterBooking: (s, a) => s.calculatePreferencesAfterBooking(a.customerId, a.booking).then((jobId) => ({ jobId })),
  cancelExpiryTimer: (s, a) => s.cancelExpiryTimer(a.waitlistId),
  getQueueStats: (s) => s.getQueueStats(),
};

async function call(service, action, args) {
  const fn = ACTIONS[action];
  if (!fn) throw new ConfigError(`unknown action ${JSON.stringify(action)}; known: ${Object.keys(ACTIONS).join(', ')}, batch`);
  return fn(service, args || {});
}

/** Answer request lines until stdin closes or SIGTERM; a failed request answers its error, not exits. */
async function serve(service) {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  process.once('SIGTERM', () => {
    lines.close();
    // A request waiting for an unreachable Redis never settles: do not outlive the signal by much.
    setTimeout(() => process.exit(0), 5000).unref();
  });
  process.stdout.write('nest producer ready\n');
  for await (const line of lines) {
    if (!line.trim()) continue;
    let answer;
    try {
      const request = JSON.parse(line);
      answer = { result: await call(service, request.action, request.args) };
    } catch (err) {
      answer = { error: String((err && err.message) || err).split('\n')[0] };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  }
}

async function main() {
  const [action, raw] = process.argv.slice(2);
  if (!action) throw new ConfigError('usage: produce.js <action> [json-args]');
  let args;
  try {
    args = raw ? JSON.parse(raw) : {};
  } catch (err) {
    throw new ConfigError(`the arguments are not JSON (${err.message})`);
  }
  const { NotificationQueueModule, WaitlistService } = buildNotificationQueueModule(loadConfig());
  const app = await NestFactory.createApplicationContext(NotificationQueueModule, { logger: ['error'] });
  try {
    const service = app.get(WaitlistService);
    if (action === 'serve') {
      await serve(service);
      return 0;
    }
    const result = action === 'batch'
      ? await Promise.all(args.map((step) => call(service, step.action, step.args)))
      : await call(service, action, args);
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await app.close();
  }
  return 0;
}

runMain('produce.js', main);
