"""Reading a job's hash into a `JobInfo`, whatever wrote it (Node, Python, a hand)."""

from __future__ import annotations

import json
from typing import Any

from bullwait.engine.jobcheck import hash_problems, not_utf8, printable
from bullwait.ops.results import JobInfo

_OPTS_DECODE = {
    "de": "deduplication",
    "fpof": "failParentOnFailure",
    "cpof": "continueParentOnFailure",
    "idof": "ignoreDependencyOnFailure",
    "kl": "keepLogs",
    "rdof": "removeDependencyOnFailure",
}


def _json_or_raw(raw: str | None, default: Any = None) -> tuple[Any, bool]:
    if raw is None:
        return default, True
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        return raw, False


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def job_info(queue: str, job_id: str, state: str, stored: dict[str, str]) -> JobInfo:
    """Every field readable and printable, whatever the hash holds; bytes that are not UTF-8
    shown as `\\xNN` (the id too: `jobs show` and `cancel` accept that form)."""
    problems = hash_problems(stored, job_id)
    raw = {printable(k): printable(v) for k, v in stored.items()}
    data, data_ok = _json_or_raw(raw.get("data"), {})
    if not_utf8(stored.get("data")):
        data, data_ok = raw["data"], False
    opts, _ = _json_or_raw(raw.get("opts"), {})
    if not isinstance(opts, dict):
        opts = {"raw": opts}
    opts = {_OPTS_DECODE.get(k, k): v for k, v in opts.items()}
    stack, _ = _json_or_raw(raw.get("stacktrace"), [])
    returnvalue, _ = _json_or_raw(raw.get("returnvalue"))
    progress, _ = _json_or_raw(raw.get("progress"))
    timestamp = _int(raw.get("timestamp"))
    delay = _int(raw.get("delay")) or 0
    attempts = opts.get("attempts")
    return JobInfo(
        queue=queue,
        id=printable(job_id),
        state=state,
        name=raw.get("name"),
        data=data,
        data_is_json=data_ok,
        opts=opts,
        attempts_made=_int(raw.get("atm") or raw.get("attemptsMade")) or 0,
        attempts_started=_int(raw.get("ats")) or 0,
        stalled_counter=_int(raw.get("stc")) or 0,
        max_attempts=attempts if isinstance(attempts, int) else None,
        priority=_int(raw.get("priority")) or 0,
        delay=delay,
        progress=progress,
        timestamp=timestamp,
        processed_on=_int(raw.get("processedOn")),
        finished_on=_int(raw.get("finishedOn")),
        due_at=(timestamp + delay) if timestamp is not None and delay else None,
        failed_reason=raw.get("failedReason") or None,
        stacktrace=[str(s) for s in stack] if isinstance(stack, list) else [str(stack)],
        returnvalue=returnvalue,
        processed_by=raw.get("pb") or None,
        problems=problems,
    )
