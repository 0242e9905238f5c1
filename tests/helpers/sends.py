"""Fixtures of the send-path tests: the loopback fake Cloud API and the process's
`Services` pointed at it, with a short WhatsApp timeout so claims end within seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bullwait.dev.fake_whatsapp import FakeWhatsApp
from bullwait.runtime.services import Services, build_services
from bullwait.settings import Settings

TIMEOUT_S = 1  # WHATSAPP_TIMEOUT_SECONDS: a claim lasts 3 s


@pytest.fixture
async def services(settings: Settings, api: FakeWhatsApp) -> AsyncIterator[Services]:
    svc = await build_services(
        settings.with_overrides(
            whatsapp_api_base_url=api.base_url,
            whatsapp_phone_number_id="1055",
            whatsapp_access_token="test-secret-token-xyz",
            whatsapp_timeout_seconds=TIMEOUT_S,
        )
    )
    yield svc
    await svc.close()


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most of `times` inside any window of `width` seconds (any start): what a rate limit
    allows, counted on the fake API's arrival stamps."""
    times, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
