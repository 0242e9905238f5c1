"""The per-job log lines of `QueueDispatch` written without structlog's call path (the `job
completed` line, the lazily bound `ctx.log`, the skipped `job started` call) are byte for
byte what structlog's path writes, whatever the values and the logging set-up."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from bullmq.job import Job

import bullwait.logs
from bullwait.logs import LineLogger, configure_logging, get_logger, log_job_completed, may_hold_secret
from bullwait.runtime.dispatch import Context, QueueDispatch, Registry
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import ExpiryJob

from helpers.jobdata import expiry_data

NOW = 1795964400.123456
STAMP = bullwait.logs.utc_timestamp(NOW)
JOB_IDS: list[Any] = [
    "expiry_w-1",
    "",
    "+34600111222",
    "x?token=abc",
    "redis://u:p@h/0",
    "Bearer abc.def",
    "bEaReR tok",
    "bob",
    "café ☕",
    'quote " and \\ backslash',
    "line\nbreak\ttab\x00",
    "a" * 300,
    None,
    17,
]
SECONDS = [0.0, 1e-7, 0.01234, 12345.678, -0.0, float("nan"), float("inf")]


@pytest.fixture
def logfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """structlog set up as `configure_logging` does, writing to a file, with one timestamp
    for every line; the previous set-up is restored after."""
    configured, config, stream = structlog.is_configured(), structlog.get_config(), bullwait.logs._stream
    clock = SimpleNamespace(time=lambda: NOW, gmtime=time.gmtime, strftime=time.strftime)
    monkeypatch.setattr(bullwait.logs, "time", clock)  # both paths stamp lines with `time.time()`
    path = tmp_path / "log.jsonl"
    try:
        yield path
    finally:
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        bullwait.logs._stream = stream


def _configure(path: Path, level: str = "info", as_json: bool = True) -> Any:
    """A logger writing to `path` (a new file each time: an old set-up keeps its own open)."""
    assert not path.exists()
    configure_logging(level, json=as_json, stream=path.open("w"))
    return get_logger()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture
def structlog_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lines that came through structlog (`LineLogger.msg`) rather than the direct path."""
    seen: list[str] = []
    original = LineLogger.msg

    def msg(self: LineLogger, message: str) -> None:
        seen.append(message)
        original(self, message)

    for name in ("msg", "info", "debug"):  # structlog calls the method named as the level
        monkeypatch.setattr(LineLogger, name, msg)
    return seen


def _both_paths(log: Any, path: Path, queue: str, job: Any, job_id: Any, seconds: float) -> tuple[str, str]:
    before = len(_lines(path))
    log_job_completed(log, queue, job, job_id, seconds)
    log.bind(queue=queue, job=job, jobId=job_id).info("job completed", duration=f"{seconds * 1000:.1f}ms")
    lines = _lines(path)[before:]
    assert len(lines) == 2, lines
    return lines[0], lines[1]


def test_completed_line_is_structlogs_line_for_any_values(logfile: Path, structlog_writes: list[str]) -> None:
    log = _configure(logfile)
    for job_id in JOB_IDS:
        for seconds in SECONDS:
            fast, general = _both_paths(log, logfile, "waitlist-expiry", "check-expiry", job_id, seconds)
            assert fast == general
    for queue, job in [("bull+x", "check-expiry"), ("waitlist-expiry", "job=1"), ("q", "Bearer x"), ("q", "ñ")]:
        fast, general = _both_paths(log, logfile, queue, job, "id-1", 0.002)
        assert fast == general
    fast, _ = _both_paths(log, logfile, "waitlist-expiry", "check-expiry", "+34600111222", 0.0)
    assert "+34600111222" not in fast and "+34*******22" in fast


def test_completed_line_of_plain_values_skips_structlog(logfile: Path, structlog_writes: list[str]) -> None:
    log = _configure(logfile)
    log_job_completed(log, "waitlist-expiry", "check-expiry", "expiry_w-1", 0.00123)
    assert structlog_writes == [], "plain values take the direct path"
    assert json.loads(_lines(logfile)[0]) == {
        "queue": "waitlist-expiry",
        "job": "check-expiry",
        "jobId": "expiry_w-1",
        "duration": "1.2ms",
        "event": "job completed",
        "level": "info",
        "timestamp": STAMP,
    }
    log_job_completed(log, "waitlist-expiry", "check-expiry", "+34600111222", 0.00123)
    assert len(structlog_writes) == 1, "a value to mask goes through structlog's redaction"


def test_completed_line_follows_the_logging_set_up(logfile: Path, structlog_writes: list[str]) -> None:
    """A bound context, context variables, another level or the console renderer: the line
    comes from structlog's path, as before."""
    log = _configure(logfile)
    fast, general = _both_paths(log.bind(worker="w1", queue="first"), logfile, "q", "j", "i", 0.001)
    assert fast == general and '"worker": "w1"' in fast
    assert len(structlog_writes) == 2

    saved = dict(bullwait.logs._structlog_vars or {})
    try:
        structlog.contextvars.bind_contextvars(request="r-1")
        fast, general = _both_paths(log, logfile, "q", "j", "i", 0.001)
        assert fast == general and '"request": "r-1"' in fast
    finally:
        structlog.contextvars.clear_contextvars()
        # structlog keeps every variable it ever made; forget them so later tests see none
        if bullwait.logs._structlog_vars is not None:
            bullwait.logs._structlog_vars.clear()
            bullwait.logs._structlog_vars.update(saved)

    quiet = logfile.with_name("warning.log")
    log = _configure(quiet, level="warning")
    log_job_completed(log, "q", "j", "i", 0.001)
    assert _lines(quiet) == []

    debug = logfile.with_name("debug.log")
    log = _configure(debug, level="debug")
    fast, general = _both_paths(log, debug, "q", "j", "i", 0.001)
    assert fast == general

    console = logfile.with_name("console.log")
    log = _configure(console, as_json=False)
    fast, general = _both_paths(log, console, "q", "j", "i", 0.001)
    assert fast == general and not fast.startswith("{")


def test_may_hold_secret_answers_as_the_single_pattern() -> None:
    """The two-step test (a character class first) agrees with the one pattern it speeds up."""
    single = re.compile(r"[@=+]|bearer", re.IGNORECASE).search
    samples = [chr(c) for c in range(0x3000)] + ["bearer", "BEARER", "bEaReR", "bear", "b", "ab=c", "x@y", "+1"]
    samples += [f"pre {word} post" for word in ("beArer", "bearer", "bea rer", "Béarer")]
    for text in samples:
        assert may_hold_secret(text) == (single(text) is not None), repr(text)


# --- through QueueDispatch ---

_QUEUE = SimpleNamespace(backend=None, qualifiedName="t:waitlist-expiry")


def _job(job_id: str, data: dict[str, Any] | None = None, attempts_made: int = 0) -> Job:
    job = Job(_QUEUE, "check-expiry", data or expiry_data(), {"attempts": 3}, job_id)  # type: ignore[arg-type]
    job.attemptsMade = attempts_made
    return job


def _run(job: Job, registry: Registry, log: Any) -> Any:
    """One job whose processor never awaits through `QueueDispatch.run`, without an event loop."""
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    coro = QueueDispatch(registry, QueueKey.WAITLIST_EXPIRY, "waitlist-expiry", settings, log).run(job, "token")
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the processor awaited")


def _registry(handler: Any) -> Registry:
    registry = Registry()
    registry.register(QueueKey.WAITLIST_EXPIRY, "check-expiry", ExpiryJob, handler)
    return registry


def _with_duration(line: str) -> str:
    return re.sub(r'"duration": "[^"]*"', '"duration": "X"', line)


def test_dispatch_lines_equal_those_of_a_bound_logger(logfile: Path) -> None:
    """`ctx.log` (bound when first used) and the `job started` line at debug write what a
    logger bound at the job's start writes."""

    async def handler(payload: ExpiryJob, ctx: Context) -> str:
        ctx.log.info("expiry checked", outcome="expired", customerPhone="+34600111222")
        ctx.log.bind(step=2).warning("second line")
        return "done"

    for level in ("debug", "info"):
        path = logfile.with_name(f"{level}.log")
        log = _configure(path, level=level)
        for job_id in ("expiry_w-1", "+34600111222"):
            before = len(_lines(path))
            assert _run(_job(job_id, attempts_made=1), _registry(handler), log) == "done"
            bound = log.bind(queue="waitlist-expiry", job="check-expiry", jobId=job_id)
            bound.debug("job started", attempt=2)
            bound.info("expiry checked", outcome="expired", customerPhone="+34600111222")
            bound.bind(step=2).warning("second line")
            bound.info("job completed", duration="X")
            lines = [_with_duration(line) for line in _lines(path)[before:]]
            half = len(lines) // 2
            assert half == (4 if level == "debug" else 3) and lines[:half] == lines[half:], lines


def test_dispatch_failure_lines_use_the_job_logger(logfile: Path) -> None:
    async def handler(payload: ExpiryJob, ctx: Context) -> None:
        raise RuntimeError("boom")

    log = _configure(logfile)
    with pytest.raises(RuntimeError):
        _run(_job("expiry_w-2"), _registry(handler), log)
    (line,) = _lines(logfile)
    event = json.loads(line)
    assert (event["event"], event["jobId"], event["error"], event["level"]) == (
        "job will retry",
        "expiry_w-2",
        "boom",
        "warning",
    )
