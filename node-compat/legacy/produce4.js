#!/usr/bin/env node
'use strict';
// A producer on Node bullmq 4.18 (npm alias `bullmq4`), the NestJS module's own stack, with its
// colon queue names (catalog.json `legacyQueueNames`). It proves that `BULLWAIT_QUEUE_NAMES=legacy`
// serves what such an app produces, and gives `bullwait migrate-legacy` real 4.x jobs to move.
//   node legacy/produce4.js notifyWaitlistCustomer '{"waitlistEntry": {...}, "slot": {...}, "delayMs": 900000}'
//   node legacy/produce4.js sendSlotAvailableNotification '{"waitlistEntry": {...}, "slot": {...}}'
//   node legacy/produce4.js calculatePreferencesAfterBooking '{"customerId": "c-1", "booking": {...}}'
//   node legacy/produce4.js add '{"queue": "WAITLIST_EXPIRY", "name": "check-expiry", "data": {...}, "opts": {...}}'
//   node legacy/produce4.js pause|resume '{"queue": "WAITLIST_NOTIFICATION"}'
//   node legacy/produce4.js batch '[{"action": ..., "args": ...}, ...]'
// Same environment variables as everything else (REDIS_URL, BULLMQ_PREFIX, ...).
const { Queue } = require('bullmq4');
const { loadConfig, runMain, ConfigError } = require('../lib/config');

async function main() {
  const [action, raw] = process.argv.slice(2);
  if (!action) throw new ConfigError('usage: produce4.js <action> [json-args]');
  let args;
  try {
    args = raw ? JSON.parse(raw) : {};
  } catch (err) {
    throw new ConfigError(`the arguments are not JSON (${err.message})`);
  }
  const config = loadConfig();
  const { catalog } = config;
  const names = catalog.legacyQueueNames;
  const jobs = catalog.jobNames;
  const defaults = Object.fromEntries(catalog.queues.map((q) => [q.key, q.defaultJobOptions]));
  const queues = {};
  const queue = (key) => {
    if (!names[key]) throw new ConfigError(`unknown queue key ${JSON.stringify(key)}; known: ${Object.keys(names).join(', ')}`);
    queues[key] ||= new Queue(names[key], { connection: config.connection, prefix: config.prefix, defaultJobOptions: defaults[key] });
    return queues[key];
  };

  const actions = {
    // The NestJS module's code, verbatim apart from the names coming from the catalog.
    async notifyWaitlistCustomer({ waitlistEntry, slot, delayMs = catalog.expiry.delayMs }) {
      const job = await queue('WAITLIST_EXPIRY').add(
        jobs.CHECK_EXPIRY,
        {
          waitlistId: waitlistEntry.id,
          slotId: slot.id,
          customerId: waitlistEntry.customerId,
          salonId: waitlistEntry.salonId,
          notifiedAt: new Date().toISOString(),
          expiresAt: new Date(Date.now() + delayMs).toISOString(),
        },
        { delay: delayMs, jobId: `${catalog.expiry.jobIdPrefix}${waitlistEntry.id}` },
      );
      return { jobId: job.id };
    },
    async sendSlotAvailableNotification({ waitlistEntry, slot }) {
      const job = await queue('WAITLIST_NOTIFICATION').add(
        jobs.SEND_SLOT_AVAILABLE,
        {
          waitlistId: waitlistEntry.id,
          customerId: waitlistEntry.customerId,
          customerPhone: waitlistEntry.customer.phone,
          salonId: waitlistEntry.salonId,
          slotDetails: {
            date: slot.date,
            time: slot.startTime,
            masterId: slot.masterId,
            masterName: slot.master.name,
            serviceId: slot.serviceId,
            serviceName: slot.service.name,
            duration: slot.duration,
            price: slot.price,
          },
          notificationType: 'slot_available',
        },
        { priority: 10, attempts: 3 },
      );
      return { jobId: job.id };
    },
    async calculatePreferencesAfterBooking({ customerId, booking }) {
      const job = await queue('PREFERENCE_CALCULATION').add(
        jobs.CALCULATE_PREFERENCES,
        {
          customerId,
          bookingId: booking.id,
          salonId: booking.salonId,
          action: 'calculate',
          data: {
            serviceId: booking.serviceId,
            masterId: booking.masterId,
            dayOfWeek: new Date(booking.date).getDay(),
            hour: parseInt(booking.startTime.split(':')[0], 10),
          },
        },
        { priority: 1 },
      );
      return { jobId: job.id };
    },
    async add({ queue: key, name, data, opts }) {
      const job = await queue(key).add(name, data, opts || {});
      return { jobId: job.id };
    },
    async pause({ queue: key }) {
      await queue(key).pause();
      return { paused: names[key] };
    },
    async resume({ queue: key }) {
      await queue(key).resume();
      return { resumed: names[key] };
    },
  };
  const call = (name, a) => {
    if (!actions[name]) throw new ConfigError(`unknown action ${JSON.stringify(name)}; known: ${Object.keys(actions).join(', ')}, batch`);
    return actions[name](a || {});
  };
  try {
    let result;
    if (action === 'batch') {
      result = [];
      for (const step of args) result.push(await call(step.action, step.args)); // in order
    } else {
      result = await call(action, args);
    }
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await Promise.all(Object.values(queues).map((q) => q.close()));
  }
  return 0;
}

runMain('produce4.js', main);
