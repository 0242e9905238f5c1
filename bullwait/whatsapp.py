"""WhatsApp Cloud API client for the slot-available template message (httpx, async).

    sender = build_sender(settings)          # CloudApiSender, or ConsoleSender with no token
    wamid = await sender.send_slot_offer("+34600111222", slot_details)

`POST {WHATSAPP_API_BASE_URL}/{WHATSAPP_API_VERSION}/{WHATSAPP_PHONE_NUMBER_ID}/messages`
with `Authorization: Bearer <token>` and a `template` message whose body parameters
are, in order: service name, date, time, master name, duration (minutes), price.

Errors are mapped to what the notification processor must do:

- `WhatsAppThrottled`: HTTP 429, error code 130429 (throughput) or 131056 (pair rate
  limit): back off and retry without using up an attempt.
- `WhatsAppRejected`: any other 4xx (invalid number, template missing, bad token):
  fail at once with the API's code and message.
- `WhatsAppUnavailable`: 5xx, timeouts, connection errors: normal retries with backoff.

The access token lives only in the client's default headers: it is never logged and
never part of an exception message.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable, Protocol

import httpx

from bullwait.errors import BullwaitError
from bullwait.logging import get_logger, mask_phone
from bullwait.payloads import SlotDetails
from bullwait.settings import Settings

THROTTLE_CODES = frozenset({130429, 131056})


class WhatsAppError(BullwaitError):
    """The Cloud API did not accept a message."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class WhatsAppThrottled(WhatsAppError):
    """Throughput or pair rate limit: retry later; `retry_after_ms` if the API said when."""

    def __init__(self, message: str, status: int | None, code: int | None, retry_after_ms: int | None) -> None:
        super().__init__(message, status, code)
        self.retry_after_ms = retry_after_ms


class WhatsAppRejected(WhatsAppError):
    """A 4xx that retrying cannot fix (invalid number, template missing, bad token)."""


class WhatsAppUnavailable(WhatsAppError):
    """5xx, timeout or connection failure: retry with backoff."""


# Awaited once the request has been written to the socket (before its answer is read).
OnSent = Callable[[], Awaitable[None]]


class MessageSender(Protocol):
    async def send_slot_offer(self, phone: str, slot: SlotDetails, on_sent: OnSent | None = None) -> str:
        """Send the offer; return the message id (`wamid`). `on_sent`, if given, is awaited
        once the request has left (it must not raise)."""
        ...

    async def close(self) -> None: ...


def template_parameters(slot: SlotDetails) -> list[str]:
    return [slot.service_name, slot.date, slot.time, slot.master_name, str(slot.duration), f"{slot.price:.2f}"]


def template_message(settings: Settings, phone: str, slot: SlotDetails) -> dict[str, Any]:
    """The JSON body of a template message to `phone` about `slot`."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": phone.lstrip("+"),
        "type": "template",
        "template": {
            "name": settings.whatsapp_template_name,
            "language": {"code": settings.whatsapp_template_language},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in template_parameters(slot)]}
            ],
        },
    }


class CloudApiSender:
    """Sends through the WhatsApp Cloud API."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        token = settings.whatsapp_access_token
        if token is None or not settings.whatsapp_phone_number_id:
            raise WhatsAppRejected("WHATSAPP_ACCESS_TOKEN and WHATSAPP_PHONE_NUMBER_ID must both be set")
        self.settings = settings
        self.url = (
            f"{settings.whatsapp_api_base_url}/{settings.whatsapp_api_version}/{settings.whatsapp_phone_number_id}/messages"
        )
        self._client = httpx.AsyncClient(
            timeout=settings.whatsapp_timeout_seconds,
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            transport=transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )

    async def send_slot_offer(self, phone: str, slot: SlotDetails, on_sent: OnSent | None = None) -> str:
        body = template_message(self.settings, phone, slot)
        extensions = {"trace": _when_sent(on_sent)} if on_sent is not None else None
        try:
            # httpx times each phase (connect, write, read) apart; bound the whole send so
            # it always ends inside the send record's claim (timeout + 2 s).
            post = self._client.post(self.url, json=body, extensions=extensions)
            response = await asyncio.wait_for(post, self.settings.whatsapp_timeout_seconds)
        except asyncio.TimeoutError:
            raise WhatsAppUnavailable("WhatsApp Cloud API timed out (whole request)") from None
        except httpx.TimeoutException as exc:
            raise WhatsAppUnavailable(f"WhatsApp Cloud API timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise WhatsAppUnavailable(f"WhatsApp Cloud API unreachable ({type(exc).__name__}: {exc})") from None
        return parse_response(response)

    async def close(self) -> None:
        await self._client.aclose()


def _when_sent(on_sent: OnSent) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpcore `trace` callback that awaits `on_sent` once the request body is written."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_body.complete"):
            await on_sent()

    return trace


def parse_response(response: httpx.Response) -> str:
    """The `wamid` of a successful send, or the matching `WhatsAppError`."""
    status = response.status_code
    payload = _json(response)
    if 200 <= status < 300:
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
            return str(messages[0]["id"])
        # Accepted (2xx) but no id: the message is on its way; retrying would send it twice.
        return f"unknown-id-http-{status}"
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    error = error if isinstance(error, dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    message = str(error.get("message") or response.reason_phrase or "no message")
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    text = f"WhatsApp Cloud API error {code if code is not None else status} (HTTP {status}): {message}"
    if details:
        text += f" ({details})"
    if status == 429 or code in THROTTLE_CODES:
        raise WhatsAppThrottled(text, status, code, _retry_after_ms(response))
    if 400 <= status < 500:
        raise WhatsAppRejected(text, status, code)
    raise WhatsAppUnavailable(text, status, code)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _retry_after_ms(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after")
    try:
        return max(0, int(float(value) * 1000)) if value else None
    except ValueError:
        return None


class ConsoleSender:
    """No token configured: log the message (phone masked) instead of sending it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger(sender="console")

    async def send_slot_offer(self, phone: str, slot: SlotDetails, on_sent: OnSent | None = None) -> str:
        wamid = f"console.{uuid.uuid4().hex}"
        self.log.info(
            "whatsapp message (console sender, not sent)",
            to=mask_phone(phone),
            template=self.settings.whatsapp_template_name,
            parameters=template_parameters(slot),
            wamid=wamid,
        )
        if on_sent is not None:
            await on_sent()
        return wamid

    async def close(self) -> None:
        return None


def build_sender(settings: Settings) -> MessageSender:
    if settings.whatsapp_access_token is None:
        return ConsoleSender(settings)
    return CloudApiSender(settings)
