"""What is wrong with a job hash that bullmq-py can neither read nor fail, in words for its failedReason.

A producer in another runtime (or a hand-written HSET) can leave a job bullmq-py trips
over: `attempts: "3"` (Node compares it as a number), `delay: "abc"`, `opts` a JSON array,
bytes that are not UTF-8. bullmq-py then raises while building the Job or while failing
it, the job stays active, stalls, returns to wait, and does it again for ever.

Nothing here runs for a healthy job (the worker's per-job CPU is tracked): the worker
asks only after bullmq-py failed to decode a job, or when a job failed anyway, and the
non-UTF-8 check looks at `str.isascii()` (a flag) before encoding anything.

Rules, as close to Node bullmq as Python allows:
- `attempts` a whole number, in any JSON form Node compares as one (3, 3.0, "3", true):
  used as that number. Anything else (Infinity, null, "abc", 2.5, a list) is invalid.
- `delay`, `priority`, `timestamp`, `atm`, `ats`, `stc`, `processedOn`, `finishedOn` hash
  fields must be integers; `data`, `opts`, `progress`, `stacktrace` must be JSON (`opts`
  an object); every field must be UTF-8.
- Invalid means the job fails once, unrecoverably, naming the field; its hash stays as it was,
  except a non-numeric `atm`, set to 0 so bullmq's script can count the one attempt.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

INT_FIELDS = ("delay", "priority", "timestamp", "atm", "ats", "stc", "processedOn", "finishedOn", "attemptsMade")
JSON_FIELDS = ("data", "opts", "progress", "stacktrace", "parent")
MAX_SHOWN = 40  # characters of a bad value quoted in a reason
_BACKOFF_TYPES = ("fixed", "exponential")
_HUGE = 2**53
_ESCAPED = re.compile(rb"\\x([0-9a-fA-F]{2})")


class BadOption(ValueError):
    """A job option no retry decision can be made from."""


def shown(value: Any) -> str:
    """`value` quoted for a reason: short, one line, ASCII (undecodable bytes as \\xNN)."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = ascii(value) if not isinstance(value, str) else repr(value).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def printable(value: str) -> str:
    """`value` with undecodable bytes (surrogate escapes) as \\xNN: safe to print, log or store."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unescape(shown_id: str) -> str:
    """The inverse of `printable`: `\\xNN` back to the byte it stands for (as a surrogate escape)."""
    raw = _ESCAPED.sub(lambda m: bytes([int(m.group(1), 16)]), shown_id.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def not_utf8(value: Any) -> bool:
    """True when `value` was read from bytes that are not UTF-8 (it holds surrogate escapes)."""
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def non_utf8_fields(job_data: dict[str, Any], job_id: Any) -> list[str]:
    """Names of the hash fields (and `id`) whose bytes are not UTF-8."""
    bad = [name for name, value in job_data.items() if not_utf8(value)]
    if not_utf8(job_id):
        bad.append("id")
    return bad


def attempts_value(raw: Any) -> int:
    """`opts.attempts` as Node's `attemptsMade + 1 < attempts` reads it; BadOption when no number fits.

    Beyond 2**53 (JSON's largest exact integer) means "for ever" all the same, and the
    number must still fit bullmq's msgpack'd arguments."""
    return max(-_HUGE, min(_HUGE, _attempts(raw)))


def _attempts(raw: Any) -> int:
    if type(raw) is int:
        return raw
    number: Any = raw
    if isinstance(raw, str):
        try:
            number = float(raw.strip() or "0")  # Node: Number("3") is 3, Number("") is 0
        except ValueError:
            raise BadOption(f"opts.attempts is {shown(raw)}, not a number") from None
    if isinstance(number, bool):
        return int(number)
    if isinstance(number, float):
        if not math.isfinite(number):
            raise BadOption(f"opts.attempts is {shown(raw)} (not finite)")
        if number.is_integer():
            return int(number)
    if number is None:
        raise BadOption("opts.attempts is null (Node writes null for Infinity or NaN)")
    raise BadOption(f"opts.attempts is {shown(raw)}, not a whole number")


def option_problems(job: Any) -> list[str]:
    """Normalise what can be (attempts "3" -> 3) on `job` in place; say what cannot be.

    Invalid options are replaced by harmless ones on the in-memory Job only, so bullmq-py
    can fail it: attempts -> this attempt, removeOnFail -> keep, backoff -> none.
    """
    problems: list[str] = []
    if not isinstance(job.stacktrace, list):  # bullmq appends to it: a hand-written "{}" would raise
        job.stacktrace = []
    opts = job.opts
    try:
        attempts = attempts_value(opts.get("attempts", 0))
    except BadOption as exc:
        problems.append(str(exc))
        attempts = job.attemptsMade + 1
    opts["attempts"] = attempts
    job.attempts = attempts
    keep = opts.get("removeOnFail", False)
    if not _valid_keep(keep):
        problems.append(f"opts.removeOnFail is {shown(keep)}, not true/false, a count or {{count, age}}")
        opts["removeOnFail"] = False
    backoff = opts.get("backoff")
    if backoff is not None and not _valid_backoff(backoff, _custom_backoff(job)):
        problems.append(
            f"opts.backoff is {shown(backoff)}, not a delay or {{type: fixed|exponential, delay}}"
            " (other types need the worker's settings.backoffStrategy)"
        )
        opts["backoff"] = None
    limit = opts.get("stackTraceLimit")
    if limit is not None and type(limit) is not int:
        problems.append(f"opts.stackTraceLimit is {shown(limit)}, not a whole number")
        opts.pop("stackTraceLimit", None)
    return problems


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _valid_keep(keep: Any) -> bool:
    if type(keep) in (bool, int):
        return True
    if isinstance(keep, dict):
        return all(_finite_number(keep.get(k, 0)) for k in ("count", "age", "limit"))
    return False


def _valid_backoff(backoff: Any, custom: bool) -> bool:
    if type(backoff) is int:
        return True
    if isinstance(backoff, dict):
        if backoff.get("type") not in _BACKOFF_TYPES:  # bullmq hands any other type to the custom strategy
            return custom and isinstance(backoff.get("type"), str)
        return _finite_number(backoff.get("delay", 0))
    return False


def _custom_backoff(job: Any) -> bool:
    """Whether the job's worker has a `settings.backoffStrategy` (bullmq's custom backoff)."""
    opts = getattr(getattr(job, "queue", None), "opts", None) or {}
    settings = opts.get("settings") if isinstance(opts, dict) else None
    return isinstance(settings, dict) and callable(settings.get("backoffStrategy"))


def hash_problems(job_data: dict[str, Any], job_id: Any) -> list[str]:
    """Every reason bullmq-py cannot build a Job from this hash (as `moveToActive` returned it)."""
    problems = [f"{name} is not valid UTF-8" for name in non_utf8_fields(job_data, job_id)]
    bad = {p.split(" ", 1)[0] for p in problems}
    for name in JSON_FIELDS:
        if name in bad or name not in job_data:
            continue
        try:
            value = json.loads(job_data[name])
        except RecursionError:
            problems.append(f"{name} is nested too deeply")
            continue
        except (ValueError, TypeError):
            problems.append(f"{name} is not valid JSON")
            continue
        if name in ("opts", "parent") and not isinstance(value, dict):
            problems.append(f"{name} is {_kind(value)}, not a JSON object")
    for name in INT_FIELDS:
        value = job_data.get(name)
        if name in bad or value in (None, ""):
            continue
        try:
            int(value)
        except (TypeError, ValueError):
            reset = " (reset to 0 to fail the job)" if name == "atm" else ""
            problems.append(f"{name} is {shown(value)}, not an integer{reset}")
    job_name = job_data.get("name")
    if job_name is not None and not isinstance(job_name, str):
        problems.append("name is not a string")
    return problems


def repairs(problems: list[str]) -> dict[str, str]:
    """Hash fields to rewrite when failing the job: `atm`, which bullmq's moveToFinished
    increments (HINCRBY on a non-number stops the script after the job left `active`)."""
    bad = {p.split(" ", 1)[0] for p in problems}
    return {"atm": "0"} if "atm" in bad else {}


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def readable_hash(job_data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A copy of the hash bullmq-py can build a Job from: bad fields dropped or emptied,
    `defa` (bullmq's deferred failure) set to a reason naming them."""
    bad = {p.split(" ", 1)[0] for p in problems}
    fixed: dict[str, Any] = {}
    for name, value in job_data.items():
        if not isinstance(name, str) or not_utf8(name) or name in bad:
            continue
        if name in ("data", "opts"):
            continue  # set below, so a decoding problem found only now cannot come back
        fixed[name] = value
    fixed["name"] = printable(job_data["name"]) if isinstance(job_data.get("name"), str) else ""
    fixed["data"] = "{}"
    fixed["opts"] = "{}" if "opts" in bad else _opts_object(job_data.get("opts"))
    fixed["defa"] = "Invalid job data: " + "; ".join(problems) + " (left unchanged in Redis)"
    return fixed


def bare_hash(fixed: dict[str, Any]) -> dict[str, Any]:
    """The least a Job is built from: name, empty data and options, the deferred failure."""
    return {"name": fixed.get("name", ""), "data": "{}", "opts": "{}", "defa": fixed["defa"]}


def _opts_object(raw: Any) -> str:
    """The job's opts if they decode to an object bullmq-py accepts, else `{}`."""
    try:
        value = json.loads(raw) if raw is not None else {}
    except (ValueError, TypeError, RecursionError):
        return "{}"
    return raw if isinstance(value, dict) else "{}"
