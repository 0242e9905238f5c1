"""`internals.JobBuilder` builds the same bullmq `Job` as `Job.fromJSON` from any fetched hash,
and raises where it raises; `next_job_data` decodes moveToFinished's reply as bullmq does."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from bullmq.job import Job
from bullmq.scripts import raw2NextJobData
from hypothesis import given, settings
from hypothesis import strategies as st

from bullwait.engine.internals import JobBuilder, next_job_data

QUEUE = SimpleNamespace(backend=object(), qualifiedName="bull:q")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.text(max_size=5))
flat_objects = st.dictionaries(st.sampled_from(["type", "delay", "count", "age", "id", "jitter"]), scalars, max_size=3)
option_names = st.sampled_from(
    [
        "attempts", "delay", "backoff", "removeOnComplete", "removeOnFail", "priority", "lifo", "jobId",
        "timestamp", "kl", "de", "deduplication", "parent", "fpof", "rdof", "idof", "cpof", "repeat", "x",
    ]
)  # fmt: skip
option_values = st.one_of(
    scalars,
    flat_objects,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.sampled_from(["id", "queue", "every"]), st.one_of(scalars, flat_objects), max_size=2),
)
options = st.dictionaries(option_names, option_values, max_size=6)


# Mostly what a worker fetches; now and then what makes `Job.fromJSON` raise or differ.
def mostly(usual: st.SearchStrategy[str], unusual: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(*[usual] * 12, st.sampled_from(unusual))


opts_text = mostly(options.map(json.dumps), ["{}", "[]", "5", "not json", '{"backoff": 3, "attempts": 3}'])
numbers = mostly(st.integers(0, 2**41).map(str), ["", "0", "abc", "1.5", " 7"])
data_text = mostly(
    st.dictionaries(st.text(max_size=4), scalars, max_size=3).map(json.dumps), ["{}", "[1]", "null", "{bad", '"s"']
)
plain_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=6),
        "data": data_text,
        "opts": opts_text,
        "timestamp": numbers,
        "delay": numbers,
        "priority": numbers,
        "processedOn": numbers,
        "finishedOn": numbers,
        "ats": numbers,
        "atm": numbers,
        "stc": numbers,
        "pb": st.text(max_size=5),
        "deid": st.text(max_size=5),
    },
)
# Fields that send a hash to `Job.fromJSON` itself: in half of the examples, one or two.
other_fields = st.dictionaries(
    st.sampled_from(["progress", "stacktrace", "failedReason", "defa", "returnvalue", "rjk", "attemptsMade", "id"]),
    st.sampled_from(["0", "50", "[]", '["at x"]', "x", "3"]),
    max_size=2,
)
fields = st.tuples(plain_fields, st.one_of(st.just({}), other_fields)).map(lambda parts: {**parts[0], **parts[1]})


def _outcome(build: Any) -> tuple[str, Any]:
    try:
        job = build()
    except Exception as exc:  # noqa: BLE001 - the comparison is of what each raises
        return "raised", type(exc)
    return "built", {k: v for k, v in vars(job).items()}


@settings(max_examples=400, deadline=None)
@given(raw=fields, job_id=st.sampled_from(["1", "expiry_w-7", None, ""]))
def test_the_same_job_as_bullmq_or_the_same_error(raw: dict[str, str], job_id: str | None) -> None:
    builder = JobBuilder(QUEUE)
    expected = _outcome(lambda: Job.fromJSON(QUEUE, raw, job_id))
    if job_id is None and "id" not in raw:
        return  # bullmq calls `b''.decode()` on a missing id: never reached, a fetch always has one
    assert _outcome(lambda: builder.build(raw, job_id)) == expected
    assert _outcome(lambda: builder.build(raw, job_id)) == expected  # from its template this time


@pytest.mark.parametrize(
    "extra",
    [
        {"progress": "50"},
        {"stacktrace": '["at x"]'},
        {"returnvalue": '{"a": 1}'},
        {"failedReason": "boom"},
        {"defa": "bad"},
        {"attemptsMade": "2"},
        {"rjk": "every-minute"},
        {"parentKey": "bull:p:1"},
        {"parent": '{"id": "1", "queueKey": "bull:p"}'},
        {"finishedOn": "5", "processedOn": "4", "ats": "2", "atm": "1", "stc": "1"},
    ],
)
def test_each_field_bullmq_reads_is_read(extra: dict[str, str]) -> None:
    raw = {"name": "n", "data": '{"a": 1}', "opts": '{"attempts": 3}', "timestamp": "9", **extra}
    assert _outcome(lambda: JobBuilder(QUEUE).build(raw, "1")) == _outcome(lambda: Job.fromJSON(QUEUE, raw, "1"))


def test_jobs_built_from_one_template_share_no_options() -> None:
    builder = JobBuilder(QUEUE)
    raw = {
        "name": "n",
        "data": "{}",
        "opts": json.dumps({"removeOnComplete": {"count": 1}, "backoff": {"type": "fixed", "delay": 5}}),
    }
    first, second = builder.build(raw, "1"), builder.build(raw, "2")
    first.opts["attempts"] = 9
    first.opts["removeOnComplete"]["count"] = 2
    first.opts["backoff"]["delay"] = 6
    first.stacktrace.append("x")
    assert second.opts["attempts"] == 0 and second.opts["removeOnComplete"] == {"count": 1}
    assert second.opts["backoff"]["delay"] == 5 and second.stacktrace == []
    assert first.removeOnComplete is first.opts["removeOnComplete"]  # as `Job.__init__` leaves them
    assert builder.build(raw, "3").opts == Job.fromJSON(QUEUE, raw, "3").opts


@given(
    job_hash=st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=8).filter(lambda v: len(v) % 2 == 0)),
    tail=st.one_of(st.just([]), st.tuples(st.integers(0, 9), st.integers(0, 9)).map(list)),
)
def test_next_job_data_decodes_as_bullmq(job_hash: list[str] | None, tail: list[int]) -> None:
    raw = [job_hash, "7", *tail]
    assert next_job_data(raw) == raw2NextJobData(raw)
    assert next_job_data(None) == raw2NextJobData(None) and next_job_data([]) == raw2NextJobData([])
