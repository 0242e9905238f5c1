"""The waitlist domain: the three queues and their jobs (catalog, payloads), the offer cascade
(offers, store), sending WhatsApp messages once and within limits (whatsapp, idempotency,
ratelimit), and the producer that NestJS-compatible jobs are added through."""
