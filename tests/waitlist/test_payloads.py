from __future__ import annotations

import pytest

from bullwait.errors import InvalidJobData
from bullwait.waitlist.payloads import ExpiryJob, NotificationJob, PreferenceJob, parse_payload

from helpers.jobdata import expiry_data, notification_data, preference_data


@pytest.mark.parametrize(
    "model,data",
    [(ExpiryJob, expiry_data()), (NotificationJob, notification_data()), (PreferenceJob, preference_data())],
)
def test_seed_examples_validate_and_round_trip(model, data) -> None:  # type: ignore[no-untyped-def]
    payload = parse_payload(model, data)
    wire = payload.to_wire()
    assert set(data) <= set(wire)
    assert parse_payload(model, wire) == payload


@pytest.mark.parametrize(
    "model,data",
    [(ExpiryJob, expiry_data()), (NotificationJob, notification_data()), (PreferenceJob, preference_data())],
)
def test_each_missing_field_is_named(model, data) -> None:  # type: ignore[no-untyped-def]
    required = [k for k in data if k not in ("notificationType", "action")]
    for field in required:
        broken = {k: v for k, v in data.items() if k != field}
        with pytest.raises(InvalidJobData) as info:
            parse_payload(model, broken)
        assert str(info.value).startswith("Invalid job data:")
        assert field in str(info.value), (field, str(info.value))


@pytest.mark.parametrize(
    "model,data,field",
    [
        (ExpiryJob, dict(expiry_data(), expiresAt="tomorrow"), "expiresAt"),
        (ExpiryJob, dict(expiry_data(), waitlistId=""), "waitlistId"),
        (NotificationJob, dict(notification_data(), customerPhone="600 111"), "customerPhone"),
        (
            NotificationJob,
            dict(notification_data(), slotDetails=dict(notification_data()["slotDetails"], price="free")),
            "slotDetails.price",
        ),
        (
            NotificationJob,
            dict(notification_data(), slotDetails=dict(notification_data()["slotDetails"], duration=-5)),
            "slotDetails.duration",
        ),
        (NotificationJob, dict(notification_data(), notificationType="spam"), "notificationType"),
        (PreferenceJob, dict(preference_data(), data=dict(preference_data()["data"], hour=25)), "data.hour"),
        (PreferenceJob, dict(preference_data(), action="explode"), "action"),
    ],
)
def test_mistyped_field_is_named(model, data, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidJobData) as info:
        parse_payload(model, data)
    assert field in str(info.value)


def test_two_bad_fields_both_named() -> None:
    data = dict(notification_data(), customerPhone="x", salonId=None)
    with pytest.raises(InvalidJobData) as exc:
        parse_payload(NotificationJob, data)
    message = str(exc.value)
    assert "customerPhone" in message and "salonId" in message


@pytest.mark.parametrize("data", ["a string", 42, None, ["list"]])
def test_not_an_object(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidJobData, match="expected a JSON object"):
        parse_payload(ExpiryJob, data)


def test_too_large() -> None:
    data = dict(expiry_data(), padding="x" * 100_000)
    with pytest.raises(InvalidJobData, match="bytes"):
        parse_payload(ExpiryJob, data)
