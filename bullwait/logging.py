"""structlog set-up: the seed's event shapes, JSON off a terminal, secrets never printed."""

from __future__ import annotations

import functools
import json as _json
import logging
import re
import sys
import time
from typing import Any

import structlog

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


def redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask phones, drop secrets, strip passwords from URLs."""
    for key, value in event.items():
        if key == "event" or (type(value) is str and _key_kind(key) == 0 and not _may_hold_secret(value)):
            continue  # the common case, checked cheaply: a busy worker logs every job
        event[key] = _redact_value(key, value)
    return event


# Every pattern of `redact_text` needs one of these; a value without any is left as is.
_may_hold_secret = re.compile(r"[@=+]|bearer", re.IGNORECASE).search


_LEVELS = {"warn": "warning", "exception": "error", "fatal": "critical"}
_ENCODER = _json.JSONEncoder(default=repr)
_second = [0, ""]


def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True)."""
    now = time.time() if now is None else now
    sec = int(now)
    if sec != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second[0] = sec
    return f"{_second[1]}.{int((now - sec) * 1_000_000):06d}Z"


def stamp(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: `level` and `timestamp`, then tracebacks rendered (redacted next).

    One processor instead of add_log_level + TimeStamper + format_exc_info: a busy worker
    logs every job, and the stock chain cost ~30 us a line (the timestamp alone ~5 us).
    """
    event["level"] = _LEVELS.get(method, method)
    event["timestamp"] = utc_timestamp()
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(_logger, method, event)
    return event


def render_json(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    return _ENCODER.encode(event)


def configure_logging(level: str = "info", json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog once per process. JSON unless writing to a terminal."""
    out = stream or sys.stderr
    as_json = (not out.isatty()) if json is None else json
    renderer: Any = render_json if as_json else structlog.dev.ConsoleRenderer(colors=False)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, stamp, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric if isinstance(numeric, int) else logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("bullwait").bind(**bound)
