"""Pydantic models of each job's data, with the NestJS module's camelCase field names on the wire.

`parse_payload` turns raw job data into a model or raises `InvalidJobData` whose message
starts `Invalid job data:` and names every bad field. The worker fails such jobs at once
(`UnrecoverableError`), keeping them with their data in the failed set.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from bullwait.errors import InvalidJobData
from bullwait.waitlist.catalog import JOB_NAMES

MAX_JOB_DATA_BYTES = 64 * 1024
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")  # ASCII digits only: \d also matches other scripts
Id = Field(min_length=1, max_length=200)


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are kept, not dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        str_strip_whitespace=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_wire_json(self) -> str:
        """`to_wire` as JSON text, in one step (non-ASCII written as UTF-8, as Node writes it)."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


class ExpiryJob(WireModel):
    """`check-expiry` on waitlist-expiry: the 15-minute offer timer."""

    waitlist_id: str = Id
    slot_id: str = Id
    customer_id: str = Id
    salon_id: str = Id
    notified_at: datetime
    expires_at: datetime

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (ISO 8601 with Z or an offset)")
        return value

    # `expiresAt` in the past is legitimate: a timer that runs late (workers down, Redis
    # restarted) must still expire the offer. Only its order against `notifiedAt` is checked.
    @model_validator(mode="after")
    def _expires_after_notified(self) -> ExpiryJob:
        if self.notified_at.tzinfo is not None and self.expires_at < self.notified_at:
            raise ValueError("expiresAt is before notifiedAt")
        return self


class SlotDetails(WireModel):
    """The offered slot. `date` is the salon's local day; `time` its local start time.

    A `date` that is over in every time zone (before yesterday in UTC) is refused: an
    offer for a slot that has already happened must not be sent, however late the job.
    """

    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    time: str = Field(pattern=r"^\d{2}:\d{2}(:\d{2})?$")
    master_id: str = Id
    master_name: str = Field(min_length=1, max_length=200)
    service_id: str = Id
    service_name: str = Field(min_length=1, max_length=200)
    duration: int = Field(gt=0, le=24 * 60)
    price: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("date")
    @classmethod
    def _real_future_day(cls, value: str, info: ValidationInfo) -> str:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a real calendar day (YYYY-MM-DD)") from None
        stored = bool(info.context and info.context.get("stored"))  # read back, not a new offer
        if not stored and day < datetime.now(UTC).date() - timedelta(days=1):
            raise ValueError(f"{value} is in the past: the slot is over, the offer cannot be sent")
        return value

    @field_validator("time")
    @classmethod
    def _real_time(cls, value: str) -> str:
        try:
            dt_time.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a real time of day (HH:MM or HH:MM:SS)") from None
        return value


class NotificationJob(WireModel):
    """`send-slot-available` on waitlist-notification: one WhatsApp offer."""

    waitlist_id: str = Id
    customer_id: str = Id
    customer_phone: str
    salon_id: str = Id
    slot_details: SlotDetails
    notification_type: Literal["slot_available"] = "slot_available"
    # Optional (bullwait's own offers set it): names the slot for the send's idempotency
    # record; without it the slot is identified by date, time, master and service.
    slot_id: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("customer_phone")
    @classmethod
    def _e164(cls, value: str) -> str:
        compact = re.sub(r"[\s\-()]", "", value)
        if not E164.match(compact):
            raise ValueError("must be an E.164 phone number such as +34600111222")
        return compact


class BookingFacts(WireModel):
    service_id: str = Id
    master_id: str = Id
    day_of_week: int = Field(ge=0, le=6)
    hour: int = Field(ge=0, le=23)


class PreferenceJob(WireModel):
    """`calculate-preferences` on waitlist-preference-calculation."""

    customer_id: str = Id
    booking_id: str | None = Field(default=None, min_length=1, max_length=200)
    salon_id: str = Id
    action: Literal["calculate", "recalculate"] = "calculate"
    data: BookingFacts | None = None

    @model_validator(mode="after")
    def _data_for_calculate(self) -> PreferenceJob:
        if self.action == "calculate" and (self.data is None or self.booking_id is None):
            raise ValueError("bookingId and data are required when action is 'calculate'")
        return self


PAYLOAD_MODELS: dict[str, type[WireModel]] = {
    JOB_NAMES["CHECK_EXPIRY"]: ExpiryJob,
    JOB_NAMES["SEND_SLOT_AVAILABLE"]: NotificationJob,
    JOB_NAMES["CALCULATE_PREFERENCES"]: PreferenceJob,
}


def parse_payload(model: type[WireModel], data: Any, raw_size: int | None = None) -> WireModel:
    """Validate job data against `model`; raise `InvalidJobData` naming each bad field.

    `raw_size`: the length of the JSON the data was read from, if known (saves encoding
    it again just to measure it).
    """
    if not isinstance(data, dict):
        raise InvalidJobData(f"Invalid job data: expected a JSON object, got {_json_type(data)}")
    try:
        size = raw_size if raw_size is not None else len(json.dumps(data, default=str))
        if size > MAX_JOB_DATA_BYTES:
            raise InvalidJobData(f"Invalid job data: {size} bytes, more than the {MAX_JOB_DATA_BYTES} allowed")
        # What `model.model_validate(data)` runs, without its keyword arguments: passing them
        # from Python into pydantic-core is a large part of a small model's validation.
        return model.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise InvalidJobData("Invalid job data: " + describe_errors(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defence in depth
        raise InvalidJobData(f"Invalid job data: {type(exc).__name__}: {str(exc)[:200]}") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (str, bytes)):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def describe_errors(exc: ValidationError) -> str:
    """`slotDetails.price: Input should be a valid number; customerPhone: Field required`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
