'use strict';
// NotificationQueueModule, the NestJS queue module bullwait mirrors, on NestJS 11 +
// @nestjs/bullmq + bullmq 6, in plain CommonJS: decorators are applied as functions, so no
// build step is needed. Queue names, job names and default job options come from catalog.json
// (written by `bullwait catalog --json`); the call-site options are the NestJS module's own.
require('reflect-metadata');
const { Module, Injectable, Inject } = require('@nestjs/common');
const { BullModule, getQueueToken } = require('@nestjs/bullmq');
const { loadConfig } = require('../lib/config');

function buildNotificationQueueModule(config = loadConfig()) {
  const { catalog, queueNames } = config;
  const QUEUE_NAMES = queueNames;
  const JOB_NAMES = catalog.jobNames;
  const EXPIRY_DELAY_MS = catalog.expiry.delayMs;
  const EXPIRY_PREFIX = catalog.expiry.jobIdPrefix;

  class WaitlistService {
    constructor(expiryQueue, notificationQueue, preferenceQueue) {
      this.expiryQueue = expiryQueue;
      this.notificationQueue = notificationQueue;
      this.preferenceQueue = preferenceQueue;
    }

    // 1: schedule the 15-minute expiry timer. (The NestJS module also calls its own
    // sendNotification first; that is application code, not part of the queue module.)
    // `delayMs` exists for tests only; the NestJS module always waits 15 minutes.
    async notifyWaitlistCustomer(waitlistEntry, slot, delayMs = EXPIRY_DELAY_MS) {
      const job = await this.expiryQueue.add(
        JOB_NAMES.CHECK_EXPIRY,
        {
          waitlistId: waitlistEntry.id,
          slotId: slot.id,
          customerId: waitlistEntry.customerId,
          salonId: waitlistEntry.salonId,
          notifiedAt: new Date().toISOString(),
          expiresAt: new Date(Date.now() + delayMs).toISOString(),
        },
        {
          delay: delayMs,
          jobId: `${EXPIRY_PREFIX}${waitlistEntry.id}`,
        },
      );
      return job.id;
    }

    // 2: the WhatsApp notification, with the NestJS module's own options.
    async sendSlotAvailableNotification(waitlistEntry, slot) {
      const job = await this.notificationQueue.add(
        JOB_NAMES.SEND_SLOT_AVAILABLE,
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
        {
          priority: 10, // the NestJS module's "High priority" (in BullMQ 10 runs after 1; see docs/node-compat.md "Priorities")
          attempts: 3,
        },
      );
      return job.id;
    }

    // 3: background preference calculation.
    async calculatePreferencesAfterBooking(customerId, booking) {
      const job = await this.preferenceQueue.add(
        JOB_NAMES.CALCULATE_PREFERENCES,
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
        {
          priority: 1, // the NestJS module's "Low priority"
        },
      );
      return job.id;
    }

    // 4: cancel a timer while it is waiting or delayed. Returns what happened.
    async cancelExpiryTimer(waitlistId) {
      const jobId = `${EXPIRY_PREFIX}${waitlistId}`;
      const job = await this.expiryQueue.getJob(jobId);
      if (!job) return { jobId, cancelled: false, state: 'missing' };
      const state = await job.getState();
      if (state === 'waiting' || state === 'delayed' || state === 'prioritized') {
        await job.remove();
        return { jobId, cancelled: true, state };
      }
      return { jobId, cancelled: false, state };
    }

    // 5: queue health.
    async getQueueStats() {
      const queues = [
        { name: 'expiry', queue: this.expiryQueue },
        { name: 'notification', queue: this.notificationQueue },
        { name: 'preference', queue: this.preferenceQueue },
      ];
      return Promise.all(
        queues.map(async ({ name, queue }) => {
          const [waiting, active, completed, failed, delayed] = await Promise.all([
            queue.getWaitingCount(),
            queue.getActiveCount(),
            queue.getCompletedCount(),
            queue.getFailedCount(),
            queue.getDelayedCount(),
          ]);
          return { name, queue: queue.name, waiting, active, completed, failed, delayed };
        }),
      );
    }
  }
  Injectable()(WaitlistService);
  Inject(getQueueToken(QUEUE_NAMES.WAITLIST_EXPIRY))(WaitlistService, undefined, 0);
  Inject(getQueueToken(QUEUE_NAMES.WAITLIST_NOTIFICATION))(WaitlistService, undefined, 1);
  Inject(getQueueToken(QUEUE_NAMES.PREFERENCE_CALCULATION))(WaitlistService, undefined, 2);

  class NotificationQueueModule {}
  Module({
    imports: [
      BullModule.forRoot({ connection: config.connection, prefix: config.prefix }),
      ...config.queues.map((q) => BullModule.registerQueue({ name: q.active, defaultJobOptions: q.defaultJobOptions })),
    ],
    providers: [WaitlistService],
    exports: [WaitlistService],
  })(NotificationQueueModule);

  return { NotificationQueueModule, WaitlistService, QUEUE_NAMES, JOB_NAMES };
}

module.exports = { buildNotificationQueueModule };
