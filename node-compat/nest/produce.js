#!/usr/bin/env node
'use strict';
// Boots the NestJS application context and calls one producer of the seed's module, printing
// its result as JSON on stdout. Used by the compatibility suite and handy by hand:
//   node nest/produce.js notifyWaitlistCustomer '{"waitlistEntry": {...}, "slot": {...}}'
//   node nest/produce.js sendSlotAvailableNotification '{"waitlistEntry": {...}, "slot": {...}}'
//   node nest/produce.js calculatePreferencesAfterBooking '{"customerId": "c-1", "booking": {...}}'
//   node nest/produce.js cancelExpiryTimer '{"waitlistId": "w-1"}'
//   node nest/produce.js getQueueStats
//   node nest/produce.js batch '[{"action": "...", "args": {...}}, ...]'
require('reflect-metadata');
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
