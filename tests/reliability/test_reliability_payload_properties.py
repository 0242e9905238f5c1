"""Property-based tests (hypothesis) over the payload models.

Whatever a producer in any runtime writes, `parse_payload` either returns a model or
raises `InvalidJobData` starting `Invalid job data:`; valid payloads round-trip.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bullwait.errors import InvalidJobData
from bullwait.waitlist.payloads import (
    MAX_JOB_DATA_BYTES,
    PAYLOAD_MODELS,
    ExpiryJob,
    NotificationJob,
    PreferenceJob,
    WireModel,
    parse_payload,
)

from helpers.jobdata import expiry_data, notification_data, preference_data

MODELS = [ExpiryJob, NotificationJob, PreferenceJob]
EXAMPLES = {ExpiryJob: expiry_data, NotificationJob: notification_data, PreferenceJob: preference_data}
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(alphabet=string.ascii_letters + string.digits + "-_:.", min_size=1, max_size=40)
names = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")
aware = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
phones = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
future_days = st.integers(min_value=0, max_value=3650).map(
    lambda d: (datetime.now(UTC) + timedelta(days=d)).date().isoformat()
)
times = st.times().map(lambda t: t.strftime("%H:%M"))


@st.composite
def expiry_payloads(draw: Any) -> dict[str, Any]:
    notified = draw(aware)
    expires = notified + timedelta(seconds=draw(st.integers(min_value=0, max_value=7 * 86400)))
    iso = lambda d: d.isoformat().replace("+00:00", "Z")  # noqa: E731
    return {
        "waitlistId": draw(ids),
        "slotId": draw(ids),
        "customerId": draw(ids),
        "salonId": draw(ids),
        "notifiedAt": iso(notified),
        "expiresAt": iso(expires),
    }


@st.composite
def notification_payloads(draw: Any) -> dict[str, Any]:
    return {
        "waitlistId": draw(ids),
        "customerId": draw(ids),
        "customerPhone": draw(phones),
        "salonId": draw(ids),
        "slotDetails": {
            "date": draw(future_days),
            "time": draw(times),
            "masterId": draw(ids),
            "masterName": draw(names).strip(),
            "serviceId": draw(ids),
            "serviceName": draw(names).strip(),
            "duration": draw(st.integers(min_value=1, max_value=1440)),
            "price": draw(st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        },
        "notificationType": "slot_available",
    }


@st.composite
def preference_payloads(draw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "customerId": draw(ids),
        "salonId": draw(ids),
        "action": draw(st.sampled_from(["calculate", "recalculate"])),
    }
    if data["action"] == "calculate" or draw(st.booleans()):
        data["bookingId"] = draw(ids)
        data["data"] = {
            "serviceId": draw(ids),
            "masterId": draw(ids),
            "dayOfWeek": draw(st.integers(0, 6)),
            "hour": draw(st.integers(0, 23)),
        }
    return data


VALID = {ExpiryJob: expiry_payloads(), NotificationJob: notification_payloads(), PreferenceJob: preference_payloads()}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=6),
    max_leaves=30,
)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PROPS
@given(data=st.data())
def test_valid_payloads_round_trip(model: type[WireModel], data: st.DataObject) -> None:
    raw = data.draw(VALID[model])
    payload = parse_payload(model, raw)
    wire = payload.to_wire()
    assert json.loads(json.dumps(wire)) == wire  # JSON-safe for any runtime
    assert parse_payload(model, wire) == payload
    assert set(raw) <= set(wire)


def _parse_or_invalid(model: type[WireModel], data: Any) -> None:
    try:
        payload = parse_payload(model, data)
    except InvalidJobData as exc:
        message = str(exc)
        assert message.startswith("Invalid job data:") and "\n" not in message
    else:
        assert isinstance(payload, model)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PROPS
@given(data=json_values)
def test_arbitrary_json_never_raises_anything_else(model: type[WireModel], data: Any) -> None:
    _parse_or_invalid(model, data)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PROPS
@given(data=st.data())
def test_any_field_replaced_by_any_json_never_raises_anything_else(model: type[WireModel], data: st.DataObject) -> None:
    raw = data.draw(VALID[model])
    field = data.draw(st.sampled_from(sorted(raw)))
    raw[field] = data.draw(json_values)
    _parse_or_invalid(model, raw)
    if isinstance(raw.get("slotDetails"), dict):
        inner = data.draw(st.sampled_from(sorted(raw["slotDetails"]) or ["date"]))
        raw["slotDetails"][inner] = data.draw(json_values)
        _parse_or_invalid(model, raw)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PROPS
@given(data=st.data())
def test_a_missing_required_field_is_named(model: type[WireModel], data: st.DataObject) -> None:
    raw = data.draw(VALID[model])
    required = [k for k in raw if k not in ("notificationType", "action", "bookingId", "data")]
    field = data.draw(st.sampled_from(required))
    del raw[field]
    with pytest.raises(InvalidJobData) as info:
        parse_payload(model, raw)
    assert field in str(info.value)


@PROPS
@given(phone=st.text(max_size=25) | st.from_regex(r"\+[1-9]\d{6,14}", fullmatch=True))
def test_phone_is_e164_or_refused_naming_the_field(phone: str) -> None:
    raw = dict(notification_data(), customerPhone=phone)
    try:
        payload = parse_payload(NotificationJob, raw)
    except InvalidJobData as exc:
        assert "customerPhone" in str(exc)
    else:
        digits = payload.customer_phone[1:]  # type: ignore[attr-defined]
        assert payload.customer_phone.startswith("+") and all(c in "0123456789" for c in digits)  # type: ignore[attr-defined]
        assert 8 <= len(payload.customer_phone) <= 16  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "phone", ["+3\u0664\u0666\u0660\u0660\u0661\u0661\u0661\u0662\u0662\u0662", "+34\uff16\uff10\uff10111222"]
)
def test_phone_digits_from_other_scripts_are_refused(phone: str) -> None:
    """Python's \\d matches Arabic-Indic and full-width digits; a phone number must not."""
    with pytest.raises(InvalidJobData, match="customerPhone"):
        parse_payload(NotificationJob, dict(notification_data(), customerPhone=phone))


@PROPS
@given(days_ago=st.integers(min_value=2, max_value=20000))
def test_slot_day_in_the_past_is_refused(days_ago: int) -> None:
    day = (datetime.now(UTC) - timedelta(days=days_ago)).date()
    assume(day.year >= 1)
    raw = notification_data()
    raw["slotDetails"] = dict(raw["slotDetails"], date=day.isoformat())
    with pytest.raises(InvalidJobData) as info:
        parse_payload(NotificationJob, raw)
    assert "slotDetails.date" in str(info.value) and "in the past" in str(info.value)


@PROPS
@given(minutes_ago=st.integers(min_value=0, max_value=10 * 24 * 60))
def test_expiry_in_the_past_is_legitimate(minutes_ago: int) -> None:
    """A late timer (workers were down) must still expire its offer."""
    now = datetime.now(UTC)
    raw = expiry_data()
    raw["notifiedAt"] = (now - timedelta(minutes=minutes_ago + 15)).isoformat()
    raw["expiresAt"] = (now - timedelta(minutes=minutes_ago)).isoformat()
    assert isinstance(parse_payload(ExpiryJob, raw), ExpiryJob)


def test_yesterday_is_still_accepted_for_time_zones_behind_utc() -> None:
    raw = notification_data()
    raw["slotDetails"] = dict(raw["slotDetails"], date=(datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    parse_payload(NotificationJob, raw)


@pytest.mark.parametrize(
    "field,value",
    [("date", "2026-02-30"), ("time", "25:61"), ("price", float("nan")), ("price", float("inf"))],
)
def test_impossible_slot_values_are_named(field: str, value: Any) -> None:
    raw = notification_data()
    raw["slotDetails"] = dict(raw["slotDetails"], **{field: value})
    with pytest.raises(InvalidJobData, match=f"slotDetails.{field}"):
        parse_payload(NotificationJob, raw)


def test_expires_before_notified_is_refused() -> None:
    raw = dict(expiry_data(), notifiedAt="2026-01-01T10:15:00Z", expiresAt="2026-01-01T10:00:00Z")
    with pytest.raises(InvalidJobData, match="expiresAt is before notifiedAt"):
        parse_payload(ExpiryJob, raw)


@pytest.mark.parametrize("job_name,model", sorted(PAYLOAD_MODELS.items()))
def test_size_limit_applies_to_every_model(job_name: str, model: type[WireModel]) -> None:
    raw = dict(EXAMPLES[model](), padding="x" * MAX_JOB_DATA_BYTES)
    with pytest.raises(InvalidJobData, match=f"more than the {MAX_JOB_DATA_BYTES} allowed"):
        parse_payload(model, raw)


@pytest.mark.parametrize(
    "value,expected", [(None, "null"), ([1], "an array"), ("s", "a string"), (3, "a number"), (True, "a boolean")]
)
def test_non_objects_are_named_in_json_terms(value: Any, expected: str) -> None:
    with pytest.raises(InvalidJobData, match=f"expected a JSON object, got {expected}$"):
        parse_payload(ExpiryJob, value)
