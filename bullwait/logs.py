"""structlog set-up: the NestJS module's event shapes, JSON off a terminal, secrets never printed.

Logging never fails a job or holds up the process: log lines go through `SafeStream`,
which drops (and counts) a line it cannot write instead of raising or blocking. A worker
whose log reader died (`bullwait worker 2>&1 | head`) used to fail every job with
"[Errno 32] Broken pipe" (the `job completed` line raised after the processor ran) and
then ignored SIGTERM, whose handler logged before it set the stop flag.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import json as _json
import logging
import os
import re
import select
import stat
import sys
import threading
import time
import weakref
from typing import Any

import structlog
from structlog.typing import EventDict

PHONE = re.compile(r"\+\d{7,15}\b")
URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)([^@\s]+)(@)")
BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-~+/=]+", re.IGNORECASE)
QUERY_SECRET = re.compile(r"((?:access_token|token|password|secret|api_key|appsecret_proof)=)[^&\s\"']+", re.IGNORECASE)
SECRET_KEYS = ("password", "token", "secret", "authorization", "access_token", "api_key")


def mask_phone(phone: str) -> str:
    """`+34600111222` -> `+34*******22`: enough to tell customers apart, not to call them."""
    digits = phone.strip()
    if len(digits) <= 5:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 5) + digits[-2:]


def clip(text: str, limit: int = 2000) -> str:
    """`text` cut to about `limit` characters, saying how much was cut: a 5 MB error message
    must not become a 5 MB log line or failedReason."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def redact_text(text: str) -> str:
    # Each pattern needs a marker substring; testing for it first keeps the per-log-line
    # cost low (a busy worker logs every job) without changing what is masked.
    if "@" in text and "://" in text:
        text = URL_PASSWORD.sub(r"\1***\3", text)
    if "earer" in text or "EARER" in text or "bearer" in text.lower():
        text = BEARER.sub(r"\1***", text)
    if "=" in text:
        text = QUERY_SECRET.sub(r"\1***", text)
    if "+" in text:
        text = PHONE.sub(lambda m: mask_phone(m.group(0)), text)
    return text


def first_line(exc: BaseException) -> str:
    """An error as one short line for a message: its first line, secrets masked."""
    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__)[:200]


@functools.lru_cache(maxsize=1024)
def _key_kind(key: str) -> int:
    """0: plain, 1: secret (value hidden), 2: phone (value masked)."""
    lowered = key.lower()
    if any(word in lowered for word in SECRET_KEYS):
        return 1
    return 2 if "phone" in lowered else 0


def _redact_value(key: str, value: Any) -> Any:
    kind = _key_kind(key)
    if kind == 1:
        return "***"
    if kind == 2 and isinstance(value, str):
        return mask_phone(value)
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    return value


def redact(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """structlog processor: mask phones, drop secrets, strip passwords from URLs."""
    for key, value in event.items():
        kind = _KINDS.get(key)
        if kind is None:
            kind = _remember(_KINDS, key, _SKIPPED if key in _OURS else _key_kind(key))
        if kind == _SKIPPED:
            continue
        if kind == 0 and type(value) is str:
            # The common case, checked cheaply: a busy worker logs every job, and most values
            # (queue and job names, durations) come back line after line.
            if value in _CLEAN:
                continue
            if not may_hold_secret(value):
                if len(value) <= _SHORT:
                    _remember(_CLEAN, value, True)
                continue
        event[key] = _redact_value(key, value)
    return event


# Every pattern of `redact_text` needs one of these; a value without any is left as is.
_marker = re.compile(r"[@=+]|bearer", re.IGNORECASE).search
# The same test, cheap for most values: a case-blind search with an alternative scans at a
# few times the cost of one character class, and "bearer" in any case holds a b or a B.
_marker_char = re.compile(r"[@=+bB]").search


def may_hold_secret(text: str) -> bool:
    """Whether `redact_text` might change `text` (False: it certainly leaves it as is)."""
    return _marker_char(text) is not None and _marker(text) is not None


# Keys never redacted: the message (as before), and the level and time `stamp` just wrote.
_OURS = frozenset({"event", "level", "timestamp"})
_SKIPPED = -1
# Per key, its `_key_kind` (or `_SKIPPED`); string values known to hold nothing to mask.
# Both are bounded: emptied when full, then filled again by the lines that follow.
_KINDS: dict[str, int] = {}
_CLEAN: dict[str, bool] = {}
_REMEMBERED = 4096
_SHORT = 100


def _remember(table: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(table) >= _REMEMBERED:
        table.clear()
    table[key] = value
    return value


_LEVELS = {"warn": "warning", "exception": "error", "fatal": "critical"}
_ENCODER = _json.JSONEncoder(default=repr)
# What `_ENCODER.encode(dict)` runs, built once: `encode` builds it again on every call, which
# was most of a line's JSON cost. Same bytes (a test compares them); no circular-reference
# check, so a self-containing dict fails with RecursionError instead of ValueError.
_encode_dict = (
    _json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, repr, _json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    if getattr(_json.encoder, "c_make_encoder", None)
    else None
)
_second = [-1, ""]


def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True)."""
    now = time.time() if now is None else now
    sec = int(now)
    if sec != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second[0] = sec
    # printf-style: an f-string's "06d" format spec cost more than the rest of the line's stamp
    return "%s%06dZ" % (_second[1], (now - sec) * 1_000_000)  # noqa: UP031


def stamp(_logger: Any, method: str, event: EventDict) -> EventDict:
    """structlog processor: `level` and `timestamp`, then tracebacks rendered (redacted next).

    One processor instead of add_log_level + TimeStamper + format_exc_info: a busy worker
    logs every job, and the stock chain cost ~30 us a line (the timestamp alone ~5 us).
    """
    event["level"] = _LEVELS.get(method, method)
    event["timestamp"] = utc_timestamp()
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(_logger, method, event)
    return event


def render_json(_logger: Any, _name: str, event: EventDict) -> str:
    if _encode_dict is not None and type(event) is dict:
        return "".join(_encode_dict(event, 0))
    return _ENCODER.encode(event)


def json_line(logger: Any, method: str, event: EventDict) -> str:
    """`stamp`, `redact` and `render_json` as one structlog processor (one call a line)."""
    return render_json(logger, method, redact(logger, method, stamp(logger, method, event)))


def merge_contextvars(logger: Any, method: str, event: EventDict) -> EventDict:
    """structlog's `merge_contextvars`, skipped while nothing was ever bound with
    `structlog.contextvars.bind_contextvars` (no variable of structlog's exists then)."""
    if _structlog_vars is not None and not _structlog_vars:
        return event
    return structlog.contextvars.merge_contextvars(logger, method, event)


# structlog's table of its context variables (None if a structlog version has none: then merge).
_structlog_vars: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


# How long a log write may wait for a full pipe (a reader that stopped reading) before the
# line is dropped; while the pipe stays full, lines are dropped without waiting.
BLOCKED_WRITE_GRACE = 0.05
# Writes of at most PIPE_BUF bytes to a pipe with room never block (POSIX atomic writes).
_CHUNK = getattr(select, "PIPE_BUF", 4096)
_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.ENOTCONN)


class SafeStream:
    """A log stream whose failures stay inside it.

    A line that cannot be written (reader gone, stream closed, any OSError, a pipe still
    full after `BLOCKED_WRITE_GRACE`) is dropped and counted; the first drop is noted once
    on stderr (if stderr still works), and a line with the count follows when the stream
    takes lines again. Streams with a file descriptor are written with `os.write`, past
    Python's buffer, so nothing is left half-flushed to fail again at exit.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.dropped = 0
        self.unreported = 0
        self.noted = False
        self.gone = False
        self.blocked = False
        self.torn = False  # a line was cut short: start the next one on a new line
        self.fd, self.poller = _writable_fd(stream)
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def write(self, text: str) -> int:
        """One line (ending with its newline) as one write."""
        self.write_lines([text])
        return len(text)

    def write_lines(self, lines: list[str]) -> None:
        """`lines`, each ending with its newline, in order and in as few writes as can be.

        The processes of `bullwait worker --processes N` share one stderr, and only writes
        of at most PIPE_BUF bytes to a pipe are atomic: the lines are cut at line ends into
        writes of at most `_CHUNK` bytes, so a line that fits is never split between two."""
        if self.gone:
            self._drop("the log stream is closed", len(lines))
            return
        if self.fd is None:
            self._write_stream("".join(lines), len(lines))
            return
        data = "".join(lines).encode(self.encoding, "backslashreplace")
        if len(data) <= _CHUNK or len(lines) == 1:  # most often: one write
            self._write_piece(data, lines)
            return
        encoded = [line.encode(self.encoding, "backslashreplace") for line in lines]
        start = size = 0
        for end, line in enumerate(encoded):
            if end > start and size + len(line) > _CHUNK:
                self._write_piece(b"".join(encoded[start:end]), lines[start:end])
                start, size = end, 0
            size += len(line)
        self._write_piece(b"".join(encoded[start:]), lines[start:])

    def _write_piece(self, data: bytes, lines: list[str]) -> None:
        """`data` (`lines`, encoded) as written by `_write_fd`; the lines not written whole
        are dropped."""
        if (self.torn or self.unreported) and not self._write_head():
            self._drop(self._failure(), len(lines))
            return
        written = self._write_fd(data)
        if written > 0:
            self.torn = data[written - 1] != 0x0A  # the next line must start on a line of its own
        if written < len(data):
            self._drop(self._failure(), len(lines) - self._whole_lines(lines, written))

    def _write_head(self) -> bool:
        """What a torn line or dropped lines leave to write first, in a write of its own (a
        batch after it keeps its lines whole in its writes); False unless all written."""
        head = (b"\n" if self.torn else b"") + (self._dropped_line() if self.unreported else b"")
        written = self._write_fd(head)
        if written > 0:
            self.torn = head[written - 1] != 0x0A
        if written < len(head):
            return False
        self.unreported = 0
        return True

    def _failure(self) -> str:
        return "the log stream is full (nobody reads it)" if self.blocked else "the log stream failed"

    def _whole_lines(self, lines: list[str], written: int) -> int:
        """How many of `lines` the first `written` bytes of their encoding hold whole."""
        whole = 0
        for line in lines:
            written -= len(line.encode(self.encoding, "backslashreplace"))
            if written < 0:
                break
            whole += 1
        return whole

    def flush(self) -> None:
        if self.fd is None and not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def _write_stream(self, text: str, lines: int = 1) -> None:
        try:
            self.stream.write(text)
        except (OSError, ValueError) as exc:
            self._failed(exc, lines)

    def _write_fd(self, data: bytes) -> int:
        done, size = 0, len(data)
        poller = self.poller  # None: writes to it never block
        while done < size:
            # An error or hang-up is "ready": the write that follows says what is wrong.
            if poller is not None and not poller.poll(0 if self.blocked else BLOCKED_WRITE_GRACE * 1000):
                self.blocked = True
                return done
            # Most lines go in one write, as they are; longer ones in atomic-sized pieces.
            chunk = data if not done and size <= _CHUNK else memoryview(data)[done : done + _CHUNK]
            try:
                done += os.write(self.fd, chunk)  # type: ignore[arg-type]
            except BlockingIOError:  # someone made the descriptor non-blocking
                self.blocked = True
                return done
            except OSError as exc:
                self.gone = exc.errno in _GONE
                self._note_once(exc)
                return done
            self.blocked = False
        return done

    def _dropped_line(self) -> bytes:
        event = {
            "event": "log lines dropped",
            "dropped": self.unreported,
            "total": self.dropped,
            "level": "warning",
            "timestamp": utc_timestamp(),
        }
        return (_ENCODER.encode(event) + "\n").encode()

    def _failed(self, exc: BaseException, lines: int = 1) -> None:
        self.gone = isinstance(exc, ValueError) or getattr(exc, "errno", None) in _GONE
        self._note_once(exc)
        self._drop(str(exc), lines)

    def _drop(self, reason: str, lines: int = 1) -> None:
        self.dropped += lines
        self.unreported += lines
        self._note_once(reason)

    def _note_once(self, reason: object) -> None:
        if self.noted:
            return
        self.noted = True
        reason = str(reason) or type(reason).__name__
        note = f"bullwait: cannot write the log ({reason}); dropping log lines, jobs go on\n"
        if self.fd != 2:
            _try_stderr(note)


def _writable_fd(stream: Any) -> tuple[int | None, Any]:
    """The stream's descriptor, and a poller for it when a write to it can block."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return None, None
    with contextlib.suppress(OSError, ValueError):
        stream.flush()  # what Python already buffered goes first
    if stat.S_ISREG(mode):
        return fd, None
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return fd, poller


def _try_stderr(text: str) -> None:
    """Write `text` to stderr if that can be done now, without waiting."""
    try:
        poller = select.poll()
        poller.register(2, select.POLLOUT)
        if poller.poll(0):
            os.write(2, text.encode("utf-8", "backslashreplace"))
    except (OSError, ValueError):
        pass


_stream: SafeStream | None = None


def dropped_log_lines() -> int:
    """Log lines this process could not write (see `SafeStream`)."""
    return _stream.dropped if _stream is not None else 0


class LineLogger:
    """structlog's WriteLogger for a `SafeStream`, flushed only when the stream has no
    descriptor to write through.

    A busy worker logs a line per job, and a write (plus a poll, for a pipe or terminal)
    per line was several percent of its CPU per job. So a line logged on a thread whose
    event loop runs waits in `_pending` for the end of the loop's turn (`loop.call_soon`
    runs before the loop next waits for I/O), and that turn's lines go out in one write.
    A line logged without a running loop (start-up, shutdown, other threads, the CLI)
    writes what waits first, then itself: the order of lines is kept.
    """

    def __init__(self, stream: SafeStream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._flush_loop: Any = None  # the loop whose next turn writes `_pending`
        _line_loggers.add(self)

    def msg(self, message: str) -> None:
        self.write_line(message + "\n")

    def write_line(self, line: str) -> None:
        """`line`, ending with its newline, as one write (or in one with its turn's others)."""
        with self._lock:
            # A stream without a descriptor has no write call to save: written at once, as before.
            loop = asyncio._get_running_loop() if self._stream.fd is not None else None
            if loop is not None:
                self._pending.append(line)
                # Again for another loop: the one that had the flush may be closed by now,
                # and the ready callbacks of a closed loop never run.
                if loop is not self._flush_loop:
                    self._flush_loop = loop
                    loop.call_soon(self.flush)
            elif self._pending:
                self._pending.append(line)
                self._write_pending()
            else:
                self._stream.write(line)
                if self._stream.fd is None:
                    self._stream.flush()

    def flush(self) -> None:
        """Write the lines waiting for the end of their loop's turn."""
        with self._lock:
            self._flush_loop = None
            if self._pending:
                self._write_pending()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        self._stream.write_lines(lines)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_line_loggers: weakref.WeakSet[LineLogger] = weakref.WeakSet()


def flush_logs() -> None:
    """Write every line still waiting for its loop's turn to end: before a loop is closed
    (its ready callbacks never run then), and at exit."""
    for line_logger in list(_line_loggers):
        line_logger.flush()


def _forget_pending() -> None:
    # A forked child must not write its parent's waiting lines a second time.
    for line_logger in list(_line_loggers):
        line_logger._pending = []
        line_logger._flush_loop = None


atexit.register(flush_logs)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pending)


def configure_logging(level: str = "info", json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog once per process. JSON unless writing to a terminal."""
    global _stream
    flush_logs()  # lines of the previous set-up first, to its stream
    out = _stream = SafeStream(stream or sys.stderr)
    as_json = (not out.isatty()) if json is None else json
    processors: list[Any] = (
        list(_JSON_CHAIN)
        if as_json
        else [merge_contextvars, stamp, redact, structlog.dev.ConsoleRenderer(colors=False)]
    )
    numeric = logging.getLevelName(level.upper())
    line_logger = LineLogger(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric if isinstance(numeric, int) else logging.INFO),
        logger_factory=lambda *_args: line_logger,
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("bullwait").bind(**bound)


# --- the `job completed` line without structlog's call path ---
#
# A busy worker writes it for every job, and structlog's path (bind, the bound logger's
# call, the event dict, the processor chain) cost several times the line's own work. When
# `log` is what `configure_logging(json=True)` makes, with nothing bound to it or to the
# context variables, and every value is a string with nothing to mask, the line is written
# here from a head built once per (queue, job name); anything else takes structlog's path.
# A test compares the two paths' bytes.

_JSON_CHAIN = (merge_contextvars, json_line)
# structlog's filtering bound-logger classes that drop debug lines (levels INFO and above).
_NO_DEBUG_LOGGERS = frozenset(structlog.make_filtering_bound_logger(level) for level in (20, 30, 40, 50))
_JSON_PROCESSORS = list(_JSON_CHAIN)
# structlog's filtering bound-logger classes that write info lines (levels NOTSET, DEBUG, INFO).
_INFO_LOGGERS = frozenset(structlog.make_filtering_bound_logger(level) for level in (0, 10, 20))
_quote = _json.encoder.encode_basestring_ascii  # what `_encode_dict` writes a string with
_COMPLETED_KEYS = ("queue", "job", "jobId", "duration")
_COMPLETED_TAIL = ', "event": "job completed", "level": "info", "timestamp": "'
# Per (queue, job name): the line's start, or "" when structlog's path must write the line.
_completed_heads: dict[tuple[Any, Any], str] = {}


def debug_enabled(log: Any) -> bool:
    """False when `log` certainly drops debug lines: a caller can skip building one (even a
    dropped call costs its keyword arguments)."""
    return type(log) not in _NO_DEBUG_LOGGERS


def log_job_completed(log: Any, queue: str, job: Any, job_id: Any, seconds: float) -> None:
    """`log.bind(queue=queue, job=job, jobId=job_id).info("job completed", duration=...)`,
    the duration in milliseconds with one decimal (`12.3ms`: nothing to mask)."""
    head = _completed_heads.get((queue, job))
    if head is None:
        head = _completed_head(queue, job)
    if (
        head
        and type(log) in _INFO_LOGGERS
        and not log._context
        and _structlog_vars is not None
        and not _structlog_vars
        and log._processors == _JSON_PROCESSORS
        and type(log._logger) is LineLogger
        and type(job_id) is str
        and (_marker_char(job_id) is None or _marker(job_id) is None)  # not may_hold_secret(job_id)
    ):
        # `utc_timestamp()`, inline: one formatting of the whole line
        now = time.time()
        sec = int(now)
        if sec != _second[0]:
            utc_timestamp(now)
        log._logger.write_line(
            '%s%s, "duration": "%.1fms"%s%s%06dZ"}\n'  # noqa: UP031 - see utc_timestamp
            % (head, _quote(job_id), seconds * 1000, _COMPLETED_TAIL, _second[1], (now - sec) * 1_000_000)
        )
        return
    log.bind(queue=queue, job=job, jobId=job_id).info("job completed", duration=f"{seconds * 1000:.1f}ms")


def _completed_head(queue: Any, job: Any) -> str:
    """`{"queue": ..., "job": ..., "jobId": ` for a queue and job name with nothing to mask."""
    head = ""
    plain_keys = not any(_key_kind(key) for key in _COMPLETED_KEYS)  # each key's values as they are
    if plain_keys and all(type(value) is str and not may_hold_secret(value) for value in (queue, job)):
        head = f'{{"queue": {_quote(queue)}, "job": {_quote(job)}, "jobId": '
    return _remember(_completed_heads, (queue, job), head)  # type: ignore[no-any-return]
