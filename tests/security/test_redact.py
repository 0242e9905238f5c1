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
