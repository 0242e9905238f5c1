"""The engine: bullmq-py made fast, on time and fault-proof. Connections (one Redis or Sentinel),
the worker, completion batching, bulk adds, durable writes and poison-job checks. Knows
nothing of the waitlist: `bullwait.Worker` runs any BullMQ queue on it."""

from bullwait.engine.internals import check_compatibility

# bullwait relies on internals of bullmq-py and redis-py: refuse versions it was not tested with.
check_compatibility()
