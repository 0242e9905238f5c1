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
- `WhatsAppUnavailable`: 5xx, or a timeout or connection error before the request was
  sent: normal retries with backoff.
- `WhatsAppAmbiguous` (a `WhatsAppUnavailable`): the request was sent and no answer came
  (a read timeout, a reset, an answer cut before its status line): the message may have
  been delivered. The send records allow one more send after it (`bullwait.waitlist.idempotency`).

Any answer with a status line is decided by its status: a 2xx is a send (its body may be
cut short, not JSON, or lack the id: `unknown-id-http-<status>`), whatever the body says.
The body is read as a stream and only its first `BODY_LIMIT` bytes are kept; it may be
anything (not JSON, nested past Python's recursion limit, cut short): only the mapped
errors above ever leave `send_slot_offer`, and the API's message in them is clipped.

The access token lives only in the client's default headers: it is never logged and
never part of an exception message.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from bullwait.errors import BullwaitError
from bullwait.logs import clip, get_logger, mask_phone
from bullwait.settings import Settings
from bullwait.waitlist.payloads import SlotDetails

THROTTLE_CODES = frozenset({130429, 131056})
# An answer's body is read up to this many bytes: the Cloud API's answers are a few hundred.
BODY_LIMIT = 64 * 1024
# The API's error message and details, as far as they go into errors, failedReason and logs.
MESSAGE_LIMIT = 500
MAX_RETRY_AFTER_MS = 60_000
# A message id in a 2xx body that is not JSON as a whole (cut short at BODY_LIMIT).
ERROR_MESSAGE = re.compile(rb'"message"\s*:\s*"([^"\\]{1,%d})' % MESSAGE_LIMIT)
WAMID = re.compile(rb'"id"\s*:\s*"(wamid\.[A-Za-z0-9+/=_\-]{1,200})"')


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


class WhatsAppAmbiguous(WhatsAppUnavailable):
    """The request was sent and no answer came (a timeout, a reset, an answer cut before
    its status line): the API may have taken the message. `kind`: timeout | connection."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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
            f"{settings.whatsapp_api_base_url}/{settings.whatsapp_api_version}"
            f"/{settings.whatsapp_phone_number_id}/messages"
        )
        self._client = httpx.AsyncClient(
            timeout=settings.whatsapp_timeout_seconds,
            # identity: the body is read raw and capped, and a compressed body could
            # decompress to any size.
            headers={"Authorization": f"Bearer {token.get_secret_value()}", "Accept-Encoding": "identity"},
            transport=transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )

    async def send_slot_offer(self, phone: str, slot: SlotDetails, on_sent: OnSent | None = None) -> str:
        exchange = _Exchange(on_sent)
        try:
            # httpx times each phase (connect, write, read) apart; bound the whole send so
            # it always ends inside the send record's claim (timeout + 2 s).
            post = exchange.run(self._client, self.url, template_message(self.settings, phone, slot))
            await asyncio.wait_for(post, self.settings.whatsapp_timeout_seconds)
            failure = None
        except TimeoutError:
            failure = "timed out (whole request)"
        except httpx.TimeoutException as exc:
            failure = f"timed out ({type(exc).__name__})"
        except Exception as exc:  # noqa: BLE001 - any transport failure maps to a WhatsApp error
            lost = "connection lost" if exchange.written else "unreachable"
            failure = f"{lost} ({type(exc).__name__}: {clip(str(exc), 200)})"
        if exchange.status is not None:  # the status line arrived: the API decided
            return parse_answer(exchange.status, exchange.headers, bytes(exchange.body), exchange.reason)
        if exchange.written:
            raise WhatsAppAmbiguous(
                f"WhatsApp Cloud API {failure} after the request was sent: the message may have been delivered",
                kind="timeout" if failure and failure.startswith("timed out") else "connection",
            )
        raise WhatsAppUnavailable(f"WhatsApp Cloud API {failure}; the request was not sent")

    async def close(self) -> None:
        await self._client.aclose()


class _Exchange:
    """What is known of one request as it goes: written yet, the answer's status, headers
    and the first `BODY_LIMIT` bytes of its body (read as a stream, the rest never read)."""

    def __init__(self, on_sent: OnSent | None) -> None:
        self.on_sent = on_sent
        self.written = False
        self.status: int | None = None
        self.reason = ""
        self.headers = httpx.Headers()
        self.body = bytearray()

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` hook: the request body is written once this event fires."""
        if event.endswith("send_request_body.complete"):
            self.written = True
            if self.on_sent is not None:
                await self.on_sent()

    async def run(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        async with client.stream("POST", url, json=body, extensions={"trace": self.trace}) as response:
            self.status, self.reason, self.headers = response.status_code, response.reason_phrase, response.headers
            async for chunk in response.aiter_raw():
                self.body += chunk[: BODY_LIMIT - len(self.body)]
                if len(self.body) >= BODY_LIMIT:
                    break  # leaving the block closes the connection; the rest is never read


def parse_response(response: httpx.Response) -> str:
    """The `wamid` of a read response, or the matching `WhatsAppError`."""
    return parse_answer(response.status_code, response.headers, response.content[:BODY_LIMIT], response.reason_phrase)


def parse_answer(status: int, headers: httpx.Headers, body: bytes, reason_phrase: str = "") -> str:
    """The `wamid` of a successful send, or the matching `WhatsAppError`. `body` may be cut
    short, not JSON, or anything else: the status decides, the body only adds details."""
    payload = _json(body)
    if 200 <= status < 300:
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
            return clip(str(messages[0]["id"]), 200)
        found = WAMID.search(body)
        # Accepted (2xx) but no id: the message is on its way; retrying would send it twice.
        return found.group(1).decode("ascii", "replace") if found else f"unknown-id-http-{status}"
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    error = error if isinstance(error, dict) else {}
    code = error.get("code") if type(error.get("code")) is int else None
    message = clip(str(error.get("message") or _message_in(body) or reason_phrase or "no message"), MESSAGE_LIMIT)
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    text = f"WhatsApp Cloud API error {code if code is not None else status} (HTTP {status}): {message}"
    if details:
        text += f" ({clip(str(details), MESSAGE_LIMIT)})"
    if status == 429 or code in THROTTLE_CODES:
        raise WhatsAppThrottled(text, status, code, _retry_after_ms(headers))
    if 400 <= status < 500:
        raise WhatsAppRejected(text, status, code)
    raise WhatsAppUnavailable(text, status, code)


def _message_in(body: bytes) -> str | None:
    """The start of the error message of a body that is not JSON as a whole (cut at BODY_LIMIT)."""
    found = ERROR_MESSAGE.search(body)
    return found.group(1).decode("utf-8", "replace") if found else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, cut short, not UTF-8, nested too deep
        return {}


def _retry_after_ms(headers: httpx.Headers) -> int | None:
    value = headers.get("retry-after")
    try:
        return min(MAX_RETRY_AFTER_MS, max(0, int(float(value) * 1000))) if value else None
    except (ValueError, OverflowError):  # not a number, or inf/nan
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
