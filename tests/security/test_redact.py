"""The log redaction processor (its fast path must mask exactly what the regexes mask)."""

from __future__ import annotations

from bullwait.logs import redact, redact_text


def test_redact_text_masks_each_kind() -> None:
    assert redact_text("redis://user:s3cret@host:6379/1") == "redis://user:***@host:6379/1"
    assert redact_text("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer ***"
    assert redact_text("got bEaReR tok123 back") == "got bEaReR *** back"
    assert redact_text("call +34600111222 now") == "call +34*******22 now"
    plain = "job completed 12.5ms expiry_w-1"
    assert redact_text(plain) is plain


def test_redact_event_keys() -> None:
    event = {
        "event": "x +34600111222",
        "password": "p",
        "customerPhone": "+34600111222",
        "nested": {"api_key": "k", "to": "+34600111222"},
        "n": 3,
    }
    out = redact(None, "info", event)
    assert out == {
        "event": "x +34600111222",
        "password": "***",
        "customerPhone": "+34*******22",
        "nested": {"api_key": "***", "to": "+34*******22"},
        "n": 3,
    }


def test_redact_remembers_clean_values_per_value_not_per_key() -> None:
    """Clean values are remembered to skip the regex next time; a remembered value under
    a secret or phone key is still hidden, and the level and time are left alone."""
    for _ in range(3):  # first sight, then remembered
        out = redact(None, "info", {"event": "e", "queue": "waitlist-expiry", "note": "s3cret-ish", "n": 1})
        assert out == {"event": "e", "queue": "waitlist-expiry", "note": "s3cret-ish", "n": 1}
    out = redact(None, "info", {"password": "s3cret-ish", "customer_phone": "+34600111222", "level": "info"})
    assert out == {"password": "***", "customer_phone": "+34*******22", "level": "info"}
    out = redact(None, "info", {"url": "redis://u:p@h/0", "jobId": "x?token=abc"})
    assert out == {"url": "redis://u:***@h/0", "jobId": "x?token=***"}


def test_redact_after_its_tables_fill() -> None:
    """The remembered keys and values are bounded: past the bound they start over, and
    masking is unchanged."""
    for i in range(10_000):
        redact(None, "info", {f"key{i % 5000}": f"value-{i}"})
    out = redact(None, "info", {"key1": "+34600111222", "token": "t", "job": "check-expiry"})
    assert out == {"key1": "+34*******22", "token": "***", "job": "check-expiry"}


def test_render_json_writes_what_json_dumps_writes() -> None:
    """The JSON renderer (built once) writes the same bytes as json.dumps(default=repr)."""
    import json
    from datetime import UTC, datetime

    from bullwait.logs import render_json

    events = [
        {
            "queue": "waitlist-expiry",
            "job": "check-expiry",
            "jobId": "expiry_w-1",
            "duration": "0.1ms",
            "event": "job completed",
            "level": "info",
            "timestamp": "2026-11-29T15:00:00.123456Z",
        },
        {
            "event": "café ☕",
            "n": 3,
            "f": 0.1,
            "inf": float("inf"),
            "none": None,
            "ok": True,
            "list": [1, "two", {"three": 3}],
            "nested": {"a": {"b": []}},
            7: "int key",
        },
        {"event": "objects", "when": datetime(2026, 11, 29, tzinfo=UTC), "set": {1}, "bytes": b"\x00"},
        {},
    ]
    for event in events:
        assert render_json(None, "info", dict(event)) == json.dumps(event, default=repr)
