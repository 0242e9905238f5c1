"""A real browser (headless Debian Chromium via playwright-core) logs in to Bull Board and sees a bullwait job."""

from __future__ import annotations

from pathlib import Path

from bullwait.settings import Settings
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.common import ROOT
from helpers.nodecompat import BOARD_PASSWORD, BOARD_USER, browser_required, node_json, start_board, start_node  # noqa: F401 (fixtures)

pytestmark = browser_required


async def test_browser_logs_in_and_sees_a_bullwait_job(  # type: ignore[no-untyped-def]
    settings: Settings, env, start_worker, start_board, sync_redis, prefix
) -> None:
    start_worker("-q", "waitlist-expiry", extra_env={"BULLWAIT_WORKER_NAME": "py-browser"})
    async with Producer(settings) as producer:
        job_id = await producer.schedule_expiry(new_expiry("w-browser-42", "slot-9", "cust-9", "salon-9"))
    board = start_board()
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    png: Path = artifacts / "bull-board.png"
    png.unlink(missing_ok=True)
    result = node_json(
        env,
        "compat/browser.js",
        board.base,
        BOARD_USER,
        BOARD_PASSWORD,
        "waitlist-expiry",
        "delayed",
        job_id,
        str(png),
        timeout=120,
    )
    assert result["found"] is True
    assert png.stat().st_size > 10_000
    # The cross-site guard lets the board's own page act on jobs (a browser's same-origin PUT).
    assert result["promote"] in (200, 204), result
    assert sync_redis.zscore(f"{prefix}:waitlist-expiry:delayed", job_id) is None, "the promoted job is still delayed"
