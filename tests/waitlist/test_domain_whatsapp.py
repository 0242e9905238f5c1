"""The Cloud API client against the local fake (real HTTP on loopback): request shape and
error mapping; the console sender."""

from __future__ import annotations

import importlib.abc
import io
import json
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.logs import configure_logging, get_logger
from bullwait.settings import Settings
from bullwait.waitlist.whatsapp import (
    CloudApiSender,
    ConsoleSender,
    WhatsAppAmbiguous,
    WhatsAppRejected,
    WhatsAppThrottled,
    WhatsAppUnavailable,
    build_sender,
)

from helpers.jobdata import SLOT_DETAILS

SLOT = SLOT_DETAILS
TOKEN = "EAAG-very-secret-token"


@asynccontextmanager
async def _sending(settings: Settings) -> AsyncIterator[CloudApiSender]:
    sender = CloudApiSender(settings)
    try:
        yield sender
    finally:
        await sender.close()


def _settings(api: FakeWhatsApp, **extra: object) -> Settings:
    return Settings(
        whatsapp_api_base_url=api.base_url,
        whatsapp_phone_number_id="1055",
        whatsapp_access_token=TOKEN,
        whatsapp_template_name="slot_offer",
        whatsapp_template_language="es",
        **extra,
    )


async def test_template_message_request(api: FakeWhatsApp) -> None:
    sender = build_sender(_settings(api))
    assert isinstance(sender, CloudApiSender)
    try:
        wamid = await sender.send_slot_offer("+34600111222", SLOT)
    finally:
        await sender.close()
    assert wamid.startswith("wamid.")
    [req] = api.received()
    assert req.path == "/v21.0/1055/messages"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    body = req.body
    assert body["messaging_product"] == "whatsapp" and body["type"] == "template" and body["to"] == "34600111222"
    assert body["template"]["name"] == "slot_offer" and body["template"]["language"] == {"code": "es"}
    params = [p["text"] for p in body["template"]["components"][0]["parameters"]]
    assert params == ["Haircut", SLOT.date, "10:30", "Ana", "45", "35.50"]


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Records every module the import system is asked to look for (finds nothing itself)."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        self.searched.append(fullname)
        return None


async def test_sends_do_not_search_for_modules(api: FakeWhatsApp) -> None:
    """httpcore imports sniffio for each lock and event of a request and, when it is not
    installed, falls back to asyncio after a failed import, which Python does not cache:
    every send then searched sys.path several times, a large share of the worker's CPU per
    send in the benchmark. With sniffio installed (a dependency) sends import nothing."""
    async with _sending(_settings(api)) as sender:
        await sender.send_slot_offer("+34600111222", SLOT)  # the first send may import lazily
        watch = _ImportWatch()
        sys.meta_path.insert(0, watch)
        try:
            for _ in range(3):
                await sender.send_slot_offer("+34600111222", SLOT)
        finally:
            sys.meta_path.remove(watch)
    assert watch.searched == []
    assert len(api.sent()) == 4


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, None, WhatsAppThrottled),
        (None, 130429, WhatsAppThrottled),
        (None, 131056, WhatsAppThrottled),
        (None, 131026, WhatsAppRejected),
        (None, 132001, WhatsAppRejected),
        (401, 190, WhatsAppRejected),
        (500, None, WhatsAppUnavailable),
        (503, None, WhatsAppUnavailable),
    ],
)
async def test_error_mapping(api: FakeWhatsApp, status: int | None, code: int | None, expected: type) -> None:
    api.fail_next(
        status=status,
        code=code,
        message="Invalid OAuth access token" if code == 190 else None,
        retry_after=2 if status == 429 else None,
    )
    async with _sending(_settings(api)) as sender:
        with pytest.raises(expected) as info:
            await sender.send_slot_offer("+34600111222", SLOT)
    text = str(info.value)
    assert TOKEN not in text
    if code is not None:
        assert str(code) in text and info.value.code == code
    if status == 429:
        assert info.value.retry_after_ms == 2000  # type: ignore[attr-defined]


async def test_timeout_is_unavailable(api: FakeWhatsApp) -> None:
    api.latency = 1.0
    async with _sending(_settings(api, whatsapp_timeout_seconds=0.2)) as sender:
        with pytest.raises(WhatsAppUnavailable, match="timed out"):
            await sender.send_slot_offer("+34600111222", SLOT)


async def test_unreachable_is_unavailable() -> None:
    from bullwait.dev.embedded import free_port

    settings = Settings(
        whatsapp_api_base_url=f"http://127.0.0.1:{free_port()}",
        whatsapp_phone_number_id="1",
        whatsapp_access_token=TOKEN,
    )
    async with _sending(settings) as sender:
        with pytest.raises(WhatsAppUnavailable, match="unreachable"):
            await sender.send_slot_offer("+34600111222", SLOT)


async def test_console_sender_without_token_logs_masked_phone() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    try:
        sender = build_sender(Settings())
        assert isinstance(sender, ConsoleSender)
        wamid = await sender.send_slot_offer("+34600111222", SLOT)
    finally:
        configure_logging("info", json=True)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["to"] == "+34*******22" and wamid == line["wamid"]
    assert "+34600111222" not in out.getvalue()


def test_secrets_are_redacted_by_key_name() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    try:
        get_logger().info("x", access_token=TOKEN, authorization=f"Bearer {TOKEN}", note=f"Bearer {TOKEN}")
    finally:
        configure_logging("info", json=True)
    assert TOKEN not in out.getvalue()


def test_settings_never_show_the_token() -> None:
    settings = Settings(whatsapp_phone_number_id="1", whatsapp_access_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_throttle_backoff() -> None:
    from bullwait.runtime.processors.notification import throttle_backoff_ms

    assert [throttle_backoff_ms(n) for n in (1, 2, 3)] == [1000, 2000, 4000]
    assert [throttle_backoff_ms(n, 131056) for n in (1, 2)] == [6000, 12000]
    assert throttle_backoff_ms(30) == 60_000


# --- answers of any shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("nested", 500, WhatsAppUnavailable),  # json.loads raises RecursionError, not ValueError
        ("nested", 200, "unknown-id-http-200"),
        ("huge", 500, WhatsAppUnavailable),
        ("huge", 200, "unknown-id-http-200"),
        ("truncated", 200, "unknown-id-http-200"),  # a 200 status line: the API took it
        ("truncated", 503, WhatsAppUnavailable),
        ("html", 502, WhatsAppUnavailable),
        ("html", 200, "unknown-id-http-200"),
        ("reset", 200, WhatsAppAmbiguous),  # the request was read, no answer came
    ],
)
async def test_odd_answers_map_to_whatsapp_outcomes_in_bounded_memory(
    api: FakeWhatsApp, kind: str, status: int, expected: type | str
) -> None:
    api.odd_next(kind, status=status)  # "huge": a 200 MB body
    sender = CloudApiSender(_settings(api))
    tracemalloc.start()
    try:
        if isinstance(expected, str):
            assert await sender.send_slot_offer("+34600111222", SLOT) == expected
        else:
            with pytest.raises(expected) as info:
                await sender.send_slot_offer("+34600111222", SLOT)
            assert type(info.value) is expected and len(str(info.value)) < 1000
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        await sender.close()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held to read one answer"
    assert len(api.received()) == 1


async def test_huge_error_message_is_clipped(api: FakeWhatsApp) -> None:
    api.fail_next(status=400, code=131026, message="x" * (5 * 2**20))  # a 5 MB message
    async with _sending(_settings(api)) as sender:
        with pytest.raises(WhatsAppRejected) as info:
            await sender.send_slot_offer("+34600111222", SLOT)
    # Past the 64 KiB read the code is lost (Meta puts it after the message): the status decides.
    assert str(info.value).startswith("WhatsApp Cloud API error 400 (HTTP 400): xxxxx") and len(str(info.value)) < 1000


async def test_slow_answer_after_the_request_left_is_ambiguous(api: FakeWhatsApp) -> None:
    api.slow_next(1.0)
    async with _sending(_settings(api, whatsapp_timeout_seconds=0.3)) as sender:
        with pytest.raises(WhatsAppAmbiguous, match="may have been delivered") as info:
            await sender.send_slot_offer("+34600111222", SLOT)
    assert info.value.kind == "timeout"


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "soon"])
async def test_odd_retry_after_is_ignored_or_capped(api: FakeWhatsApp, value: str) -> None:
    api.fail_next(status=429, code=130429, retry_after=None)
    api._plan[-1].retry_after = value  # type: ignore[assignment]  # sent as the header's text
    async with _sending(_settings(api)) as sender:
        with pytest.raises(WhatsAppThrottled) as info:
            await sender.send_slot_offer("+34600111222", SLOT)
    assert info.value.retry_after_ms is None or info.value.retry_after_ms <= 60_000


def test_failed_reason_and_log_field_are_clipped() -> None:
    from bullwait.runtime.dispatch import FAILED_REASON_LIMIT, _clip_message

    exc = RuntimeError("y" * (5 * 2**20))
    _clip_message(exc)
    assert len(str(exc)) < FAILED_REASON_LIMIT + 100 and "more characters" in str(exc)
