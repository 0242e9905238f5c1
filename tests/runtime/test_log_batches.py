"""The log lines of one event-loop turn go out together (bullwait.logs.LineLogger).

A busy worker logs a line per job; a write (and, for a pipe, a poll) per line was several
percent of its CPU per job. Lines logged inside a running loop now wait for the end of the
turn and leave in one write; nothing about them may change otherwise: their order (across
structlog's path, the `job completed` fast path and other threads), writes that never split
a line of at most PIPE_BUF bytes (several processes share one stderr pipe), a full pipe's
dropped lines and their count, and no line lost at exit.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

import bullwait.logs
from bullwait.logs import _CHUNK, configure_logging, get_logger, log_job_completed

from helpers.common import ROOT


@dataclass
class PipeLog:
    """structlog set up by `configure_logging`, writing into a pipe read here."""

    read_fd: int
    write_fd: int
    writes: list[bytes] = field(default_factory=list)  # every os.write to the pipe, as written

    def read(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read().decode().splitlines()]


def _pipe_log(monkeypatch: pytest.MonkeyPatch, pipe_size: int | None = None) -> Iterator[PipeLog]:
    saved = structlog.is_configured(), structlog.get_config(), bullwait.logs._stream
    read_fd, write_fd = os.pipe()
    if pipe_size:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, pipe_size)
    os.set_blocking(read_fd, False)
    pipe = PipeLog(read_fd, write_fd)
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if fd == write_fd:
            pipe.writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    out = os.fdopen(write_fd, "w")
    configure_logging("info", json=True, stream=out)
    try:
        yield pipe
    finally:
        configured, config, stream = saved
        configure_logging("info", json=True, stream=open(os.devnull, "w"))  # writes what still waits
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        bullwait.logs._stream = stream
        out.close()
        os.close(read_fd)


@pytest.fixture
def pipe_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipeLog]:
    yield from _pipe_log(monkeypatch)


@pytest.fixture
def small_pipe_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipeLog]:
    """The same, into a pipe of two pages that nobody reads until the test does."""
    yield from _pipe_log(monkeypatch, pipe_size=8192)


async def test_lines_of_one_turn_go_out_in_one_write(pipe_log: PipeLog) -> None:
    log = get_logger()
    for i in range(10):
        log_job_completed(log, "waitlist-expiry", "check-expiry", f"expiry_w-{i}", 0.001)  # the fast path
        log.info("between", n=i)  # structlog's path
    assert pipe_log.writes == [], "written when the turn ends"
    await asyncio.sleep(0)
    assert len(pipe_log.writes) == 1
    events = pipe_log.events()
    assert [e.get("jobId", e.get("n")) for e in events] == [x for i in range(10) for x in (f"expiry_w-{i}", i)]
    log.info("next turn")
    await asyncio.sleep(0)
    assert len(pipe_log.writes) == 2 and [e["event"] for e in pipe_log.events()] == ["next turn"]


async def test_a_line_from_another_thread_follows_the_waiting_lines(pipe_log: PipeLog) -> None:
    log = get_logger()
    log.info("first")
    thread = threading.Thread(target=lambda: log.info("from a thread"))  # no loop runs there
    thread.start()
    thread.join()
    log.info("third")
    await asyncio.sleep(0)
    assert [e["event"] for e in pipe_log.events()] == ["first", "from a thread", "third"]
    assert len(pipe_log.writes) == 2, "the thread wrote the waiting line with its own"


def test_lines_left_by_a_closed_loop_go_out_with_the_next_loops(pipe_log: PipeLog) -> None:
    log = get_logger()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        # Logged in the turn that stops the loop: the flush it asks for is never run.
        loop.call_soon(log.info, "last turn of a loop")

    loop.run_until_complete(main())
    loop.close()
    assert pipe_log.writes == []

    async def later() -> None:
        log.info("in the next loop")

    asyncio.run(later())
    assert [e["event"] for e in pipe_log.events()] == ["last turn of a loop", "in the next loop"]
    log.info("no loop")
    assert [e["event"] for e in pipe_log.events()] == ["no loop"]


async def test_a_long_turn_is_cut_at_line_ends_into_atomic_writes(pipe_log: PipeLog) -> None:
    log = get_logger()
    pads = [300] * 30 + [3 * _CHUNK] + [100] * 20 + [_CHUNK - 200] + [50] * 5
    for i, pad in enumerate(pads):
        log.info("line", n=i, pad="x" * pad)
    await asyncio.sleep(0)
    written = pipe_log.read()
    assert b"".join(pipe_log.writes) == written
    lines = written.splitlines(keepends=True)
    assert [json.loads(line)["n"] for line in lines] == list(range(len(pads)))
    long_line = next(line for line in lines if len(line) > _CHUNK)
    ends, offset = set(), 0
    for line in lines:
        offset += len(line)
        ends.add(offset)
    offset, pieces = 0, []
    for data in pipe_log.writes:
        assert len(data) <= _CHUNK
        whole_lines = offset in ends | {0} and offset + len(data) in ends
        assert whole_lines or data in long_line, "only a line longer than PIPE_BUF is cut"
        pieces.append((data, whole_lines))
        offset += len(data)
    for (first, whole), (second, next_whole) in itertools.pairwise(pieces):
        if whole and next_whole:
            next_line = second.split(b"\n", 1)[0] + b"\n"
            assert len(first) + len(next_line) > _CHUNK, "two writes that could have been one"
    assert len(pipe_log.writes) < len(pads) / 3


async def test_a_full_pipe_drops_whole_lines_and_says_how_many(small_pipe_log: PipeLog) -> None:
    log = get_logger()
    for i in range(40):
        log.info("line", n=i, pad="x" * 300)  # about 12 kB, into a pipe of 8 kB nobody reads
    await asyncio.sleep(0)
    got = [e["n"] for e in small_pipe_log.events()]  # every line whole
    assert 0 < len(got) < 40 and got == list(range(len(got)))
    assert bullwait.logs.dropped_log_lines() == 40 - len(got)
    small_pipe_log.writes.clear()
    for i in range(10):
        log.info("after", n=i, pad="x" * (_CHUNK // 10 - 100))  # one write's worth, but not with the count
    await asyncio.sleep(0)
    written = small_pipe_log.read()
    dropped, after = written.split(b"\n", 1)
    assert len(after) <= _CHUNK < len(written), "the count and the lines do not fit in one write"
    lost = 40 - len(got)
    assert (json.loads(dropped)["event"], json.loads(dropped)["dropped"]) == ("log lines dropped", lost)
    assert [json.loads(line)["n"] for line in after.splitlines()] == list(range(10))
    assert all(data.endswith(b"\n") for data in small_pipe_log.writes), "lines kept whole"


async def test_a_line_torn_by_a_full_pipe_is_ended_before_the_next(small_pipe_log: PipeLog) -> None:
    log = get_logger()
    log.info("long", pad="x" * 20_000)  # more than the pipe holds: cut short
    log.info("dropped too")
    await asyncio.sleep(0)
    torn = small_pipe_log.read()
    assert torn.startswith(b'{"pad": "xxx') and not torn.endswith(b"\n")
    assert bullwait.logs.dropped_log_lines() == 2
    log.info("after")
    await asyncio.sleep(0)
    blank, dropped, after = small_pipe_log.read().decode().split("\n")[:3]
    assert blank == "" and json.loads(dropped)["dropped"] == 2 and json.loads(after)["event"] == "after"


EXITS = """
import asyncio, sys
from bullwait.logs import configure_logging, get_logger
from bullwait.runtime.runner import run_until_done

configure_logging("info", json=True)
log = get_logger()
how = sys.argv[1]

def last_words():
    log.info("last words")
    raise SystemExit(3)

async def main():
    for i in range(3):
        log.info("line", n=i)
    if how == "raise":
        raise RuntimeError("boom")
    loop = asyncio.get_running_loop()
    if how == "exit":
        loop.call_soon(last_words)  # out of the loop at once: its flush never runs
    elif how == "closed":
        loop.call_soon(log.info, "last words")  # logged in the turn that stops the loop

if how == "runner":
    how = "raise"
    run_until_done(main())
elif how == "raise":
    asyncio.run(main())
else:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
"""


@pytest.mark.parametrize(("how", "code"), [("exit", 3), ("closed", 0), ("raise", 1), ("runner", 1)])
def test_lines_logged_before_the_process_ends_are_written(how: str, code: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXITS, how], capture_output=True, cwd=ROOT, timeout=60, env=dict(os.environ)
    )
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [e.get("n", e["event"]) for e in lines]
    assert events == [0, 1, 2] + ([] if how in ("raise", "runner") else ["last words"]), err
    if code == 1:
        assert err.index('"n": 2') < err.index("Traceback"), "the lines come before the traceback"
