"""bullwait.engine.jobcheck: how a poison job's options and hash fields are read and named."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from bullmq import UnrecoverableError

from bullwait.engine.jobcheck import (
    BadOption,
    attempts_value,
    hash_problems,
    option_problems,
    printable,
    readable_hash,
    unescape,
)
from bullwait.runtime.dispatch import _final


@pytest.mark.parametrize(
    "raw,expected",
    [(3, 3), (3.0, 3), ("3", 3), (" 3 ", 3), ("", 0), (True, 1), (0, 0), (1e300, 2**53), (10**30, 2**53)],
)
def test_attempts_read_as_node_compares_them(raw: Any, expected: int) -> None:
    assert attempts_value(raw) == expected


@pytest.mark.parametrize(
    "raw,words",
    [
        (float("inf"), "not finite"),
        (float("nan"), "not finite"),
        ("abc", "'abc', not a number"),
        (None, "null"),
        (2.5, "not a whole number"),
        ([3], "not a whole number"),
        ("Infinity", "not finite"),
    ],
)
def test_attempts_no_number_fits_are_named(raw: Any, words: str) -> None:
    with pytest.raises(BadOption, match=r"opts\.attempts") as exc:
        attempts_value(raw)
    assert words in str(exc.value)


def _job(**opts: Any) -> Any:
    return SimpleNamespace(opts=dict(opts), attempts=opts.get("attempts"), attemptsMade=0, stacktrace=[])


def test_a_failure_with_attempts_infinity_is_final() -> None:
    """Item 2: `int(inf)` in the error handler raised OverflowError, which bullmq then retried."""
    assert _final(_job(attempts=float("inf")), RuntimeError("boom")) is True  # type: ignore[arg-type]
    assert _final(_job(attempts="3"), RuntimeError("boom")) is False  # type: ignore[arg-type]
    assert _final(_job(attempts="abc"), RuntimeError("boom")) is True  # type: ignore[arg-type]
    assert _final(_job(attempts=3), UnrecoverableError("bad data")) is True  # type: ignore[arg-type]


def test_option_problems_normalise_or_name_and_leave_a_failable_job() -> None:
    job = _job(attempts="3")
    assert option_problems(job) == [] and job.opts["attempts"] == job.attempts == 3
    backoff = {"type": "fixed", "delay": "soon"}
    job = _job(attempts="abc", removeOnFail={"count": "x"}, backoff=backoff, stackTraceLimit="2")
    problems = option_problems(job)
    named = ["opts.attempts", "opts.removeOnFail", "opts.backoff", "opts.stackTraceLimit"]
    assert [p.split(" ")[0] for p in problems] == named
    assert job.attempts == 1 and job.opts["removeOnFail"] is False and job.opts["backoff"] is None


def test_hash_problems_name_every_unreadable_field() -> None:
    raw = {
        "name": "check-expiry",
        "data": "{not json",
        "opts": json.dumps([1]),
        "delay": "abc",
        "atm": "x",
        "priority": "0",
        "stacktrace": "\udcff",
    }
    problems = hash_problems(raw, "id-\udcfe")
    assert "data is not valid JSON" in problems
    assert "opts is an array, not a JSON object" in problems
    assert "delay is 'abc', not an integer" in problems
    assert any(p.startswith("atm is 'x'") for p in problems)
    assert "stacktrace is not valid UTF-8" in problems and "id is not valid UTF-8" in problems
    fixed = readable_hash(raw, problems)
    assert "delay" not in fixed and "atm" not in fixed and "stacktrace" not in fixed
    assert fixed["data"] == "{}" and fixed["opts"] == "{}" and fixed["defa"].startswith("Invalid job data: ")


def test_undecodable_bytes_print_as_escapes_and_come_back() -> None:
    raw = b"job-\xff\xfe-\xc3\xa9".decode("utf-8", "surrogateescape")
    assert printable(raw) == "job-\\xff\\xfe-\u00e9"
    assert unescape(printable(raw)) == raw
    assert printable("plain") == "plain"
