"""The seed's example job data, exactly as NestJS sends it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any


def expiry_data(waitlist_id: str = "w-1", minutes: float = 15) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "waitlistId": waitlist_id,
        "slotId": "slot-1",
        "customerId": "cust-1",
        "salonId": "salon-1",
        "notifiedAt": now.isoformat().replace("+00:00", "Z"),
        "expiresAt": (now + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
    }


def notification_data(waitlist_id: str = "w-1", salon_id: str = "salon-1", phone: str = "+34600111222") -> dict[str, Any]:
    return {
        "waitlistId": waitlist_id,
        "customerId": "cust-1",
        "customerPhone": phone,
        "salonId": salon_id,
        "slotDetails": {
            "date": "2026-12-01",
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
