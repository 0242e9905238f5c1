"""The real Bull Board (node-compat/board/server.js) on the queues bullwait serves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bullmq import Job

from bullwait.catalog import QueueKey
from bullwait.payloads import NotificationJob
from bullwait.processing import Registry
from bullwait.producer import Producer, new_expiry
from bullwait.runner import run_workers
from bullwait.settings import Settings

from fixtures import notification_data
from conftest import wait_job_state
from nodecompat import BOARD_USER, env_without, node_json, node_required, run_node
from nodecompat import start_board, start_node  # noqa: F401 (fixtures)

pytestmark = node_required


def test_board_refuses_to_start_without_credentials(env: dict[str, str]) -> None:
    bare = env_without(env, "BULL_BOARD_USER", "BULL_BOARD_PASSWORD")
    proc = run_node(dict(bare, BULL_BOARD_PORT="0"), "board/server.js", check=False, timeout=20)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BULL_BOARD_USER" in lines[0] and "BULL_BOARD_AUTH=off" in lines[0], proc.stderr
    half = run_node(dict(bare, BULL_BOARD_PORT="0", BULL_BOARD_USER="ops"), "board/server.js", check=False, timeout=20)
    assert half.returncode != 0 and "BULL_BOARD_PASSWORD" in half.stderr


def test_board_asks_for_login_and_binds_loopback(start_board, start_node) -> None:  # type: ignore[no-untyped-def]
    board = start_board()
    assert f"listening on http://127.0.0.1:{board.port}/admin/queues" in board.proc.log()
    import httpx

    assert httpx.get(f"{board.base}/api/queues").status_code == 401
    assert httpx.get(f"{board.base}/api/queues", auth=(BOARD_USER, "wrong")).status_code == 401
    assert board.get("/api/queues").status_code == 200
    external = _non_loopback_address()
    if external:  # the port answers on loopback only
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{external}:{board.port}/admin/queues", timeout=3)
    # Switched off explicitly, it serves without a login (and says so).
    from bullwait.embedded import free_port

    port = free_port()
    open_board = start_node("board/server.js", extra_env={"BULL_BOARD_AUTH": "off", "BULL_BOARD_PORT": str(port)},
                            ready="bull board listening")
    assert "auth OFF" in open_board.log()
    assert httpx.get(f"http://127.0.0.1:{port}/admin/queues/api/queues").status_code == 200


def _non_loopback_address() -> str | None:
    """This host's address on its default route (a UDP connect sends nothing), if any."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_read_only_board_writes_no_queue_meta(settings: Settings, start_board, sync_redis, prefix, env) -> None:  # type: ignore[no-untyped-def]
    board = start_board(read_only=True)
    queues = board.get("/api/queues").json()["queues"]
    assert {q["name"] for q in queues} == {"waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"}
    assert all(q["readOnlyMode"] for q in queues)
    assert board.put("/api/queues/waitlist-expiry/pause").status_code == 405
    assert list(sync_redis.scan_iter(f"{prefix}:*")) == [], "a read-only board wrote to Redis"

    async with Producer(settings) as producer:
        await producer.schedule_expiry(new_expiry("w-ro", "s", "c", "salon"))
    meta_key = f"{prefix}:waitlist-expiry:meta"
    before = sync_redis.hgetall(meta_key)
    board.get("/api/queues", params={"activeQueue": "waitlist-expiry", "status": "delayed"})
    time.sleep(0.3)
    assert sync_redis.hgetall(meta_key) == before
    assert not sync_redis.exists(f"{prefix}:waitlist-notification:meta")


def test_a_writable_board_does_write_meta(start_board, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    """The control for the test above: without skipMetasUpdate, bullmq writes its version."""
    board = start_board(read_only=False)
    assert board.get("/api/queues").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not sync_redis.exists(f"{prefix}:waitlist-expiry:meta"):
        time.sleep(0.05)
    assert sync_redis.hget(f"{prefix}:waitlist-expiry:meta", "version") == "bullmq:6.7.0"


async def test_board_and_node_list_python_jobs_and_workers(settings: Settings, env, start_worker, start_board) -> None:  # type: ignore[no-untyped-def]
    start_worker(extra_env={"BULLWAIT_WORKER_NAME": "py-compat-1"})
    async with Producer(settings) as producer:
        job_id = await producer.schedule_expiry(new_expiry("w-board", "slot-1", "cust-1", "salon-1"))
        board = start_board()
        listing = board.get("/api/queues", params={"activeQueue": "waitlist-expiry", "status": "delayed"}).json()
        expiry = next(q for q in listing["queues"] if q["name"] == "waitlist-expiry")
        assert expiry["counts"]["delayed"] == 1 and expiry["hasWorkers"] is True
        job = next(j for j in expiry["jobs"] if j["id"] == job_id)
        assert job["data"]["waitlistId"] == "w-board" and job["name"] == "check-expiry"

        for queue in ("waitlist-expiry", "waitlist-notification", "waitlist-preference-calculation"):
            workers = board.get(f"/api/queues/{queue}/workers").json()["workers"]
            assert "py-compat-1" in [w["name"] for w in workers], workers

        node_view = node_json(env, "compat/inspect.js")
        for key in ("WAITLIST_EXPIRY", "WAITLIST_NOTIFICATION", "PREFERENCE_CALCULATION"):
            assert any(w["rawname"].endswith(":w:py-compat-1") for w in node_view[key]["workers"]), node_view[key]
        # bullmq-py's own get_workers() still sees the Python worker too.
        for key in QueueKey:
            names = [w.get("rawname") for w in await producer.queue(key).get_workers()]
            assert any(n and n.endswith(":w:py-compat-1") for n in names), names


async def test_failed_python_job_retried_from_board_runs_again_in_python(settings: Settings, start_board) -> None:  # type: ignore[no-untyped-def]
    runs: list[int] = []
    registry = Registry()

    async def flaky(payload: Any, ctx: Any) -> dict[str, Any]:
        runs.append(ctx.job.attemptsMade)
        if len(runs) == 1:
            raise RuntimeError("whatsapp 503")
        return {"sent": payload.waitlist_id, "run": len(runs)}

    registry.register(QueueKey.WAITLIST_NOTIFICATION, "send-slot-available", NotificationJob, flaky)
    stop = asyncio.Event()
    run = asyncio.ensure_future(run_workers(settings, registry, [QueueKey.WAITLIST_NOTIFICATION], 5, stop=stop))
    try:
        async with Producer(settings) as producer:
            queue = producer.queue(QueueKey.WAITLIST_NOTIFICATION)
            job_id = await producer.add(QueueKey.WAITLIST_NOTIFICATION, NotificationJob.model_validate(notification_data("w-r")),
                                        job_id="note-retry", attempts=1)
            await wait_job_state(queue, job_id, "failed")
            board = start_board()
            response = board.put(f"/api/queues/waitlist-notification/{job_id}/retry")
            assert response.status_code in (200, 204), response.text
            await wait_job_state(queue, job_id, "completed")
            job = await Job.fromId(queue, job_id)
            assert job.returnvalue == {"sent": "w-r", "run": 2}
            assert len(runs) == 2
    finally:
        stop.set()
        await run


