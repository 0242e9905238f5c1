"""A test plugin for `bullwait worker` (BULLWAIT_PROCESSORS=helpers.sentinel_load_processors:register)
used by test_sentinel_failover_load.py.

The built-in `check-expiry` runs as always; each time it returns, the timer's job id is
appended as one line to the file named by BWTEST_TIMER_RUNS. The count lives outside Redis
on purpose: a failover can drop the master's last writes, and with them any count kept
there, so "ran twice" and "never ran" must be read from something the failover cannot touch
(as the fake WhatsApp API does for sends).
"""

from __future__ import annotations

import os
from typing import Any

from bullwait.runtime.dispatch import Context, Registry
from bullwait.waitlist.catalog import JOB_NAMES, QueueKey
from bullwait.waitlist.payloads import ExpiryJob

RUNS_FILE = "BWTEST_TIMER_RUNS"


def register(registry: Registry) -> Registry:
    builtin = registry.lookup(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"])
    if builtin is None:
        raise RuntimeError("no built-in check-expiry to wrap")
    # O_APPEND: each short line is one write, whole, even if two jobs finish together.
    fd = os.open(os.environ[RUNS_FILE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def counted_expiry(payload: ExpiryJob, ctx: Context) -> Any:
        result = await builtin.handler(payload, ctx)
        os.write(fd, f"{ctx.job.id}\n".encode())
        return result

    registry.register(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"], ExpiryJob, counted_expiry)
    return registry
