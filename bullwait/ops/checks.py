"""Argument checks of the operator actions, before anything touches Redis.

`what` names the argument in the message: the library passes its parameter name, the CLI
its flag (`--limit`), so each caller's error speaks its caller's language. Job ids are
checked by bullwait.waitlist.jobids, the one rule producers and operators share.
"""

from __future__ import annotations

from collections.abc import Iterable

from bullwait.errors import BadArgument

# States as BullMQ names its keys; `waiting` is accepted for `wait`.
LIST_STATES = ("wait", "active", "paused")
ZSET_STATES = ("delayed", "prioritized", "completed", "failed", "waiting-children")
FINISHED_STATES = ("completed", "failed")
JOB_STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "paused", "waiting-children")
CLEAN_STATES = ("completed", "failed", "delayed", "wait", "active", "prioritized", "paused")
STATE_ALIASES = {"waiting": "wait"}

# A count (a limit of jobs) beyond any queue's size; larger ones would reach Lua as floats.
MAX_COUNT = 1_000_000_000


def normalize_state(state: str, allowed: Iterable[str] = JOB_STATES) -> str:
    wanted = STATE_ALIASES.get(state.strip().lower(), state.strip().lower())
    allowed = tuple(allowed)
    if wanted not in allowed:
        raise BadArgument(f"unknown status {state!r}; use one of: {', '.join(allowed)}")
    return wanted


def check_count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if value < 1:
        raise BadArgument(f"{what} must be 1 or more (got {value}); leave it out for no limit")
    if value > MAX_COUNT:
        shown = value if value < 10**20 else f"a {len(str(value))}-digit number"
        raise BadArgument(f"{what} must be at most {MAX_COUNT} (got {shown}); leave it out for no limit")
    return value
