"""The NestJS module's example job data, exactly as NestJS sends it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bullwait.waitlist.payloads import SlotDetails


def expiry_data(waitlist_id: str = "w-1", minutes: float = 15) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "waitlistId": waitlist_id,
        "slotId": "slot-1",
        "customerId": "cust-1",
        "salonId": "salon-1",
        "notifiedAt": now.isoformat().replace("+00:00", "Z"),
        "expiresAt": (now + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
    }


def future_day(days: int = 3) -> str:
    """A slot day that stays in the future whenever the suite runs (past days are refused)."""
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


def notification_data(
    waitlist_id: str = "w-1", salon_id: str = "salon-1", phone: str = "+34600111222"
) -> dict[str, Any]:
    return {
        "waitlistId": waitlist_id,
        "customerId": "cust-1",
        "customerPhone": phone,
        "salonId": salon_id,
        "slotDetails": {
            "date": future_day(),
            "time": "10:30",
            "masterId": "master-1",
            "masterName": "Ana",
            "serviceId": "service-1",
            "serviceName": "Haircut",
            "duration": 45,
            "price": 35.5,
        },
        "notificationType": "slot_available",
    }


def preference_data(booking_id: str = "b-1", customer_id: str = "cust-1") -> dict[str, Any]:
    return {
        "customerId": customer_id,
        "bookingId": booking_id,
        "salonId": "salon-1",
        "action": "calculate",
        "data": {"serviceId": "service-1", "masterId": "master-1", "dayOfWeek": 2, "hour": 10},
    }


# A slot offered in the waitlist tests, and the WhatsApp token their fake Cloud API expects.
SLOT_DETAILS = SlotDetails(
    date=future_day(),
    time="10:30",
    master_id="m-1",
    master_name="Ana",
    service_id="s-1",
    service_name="Haircut",
    duration=45,
    price=35.5,
)
API_TOKEN = "test-secret-token-xyz"
