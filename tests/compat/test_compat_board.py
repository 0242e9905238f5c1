"""The real Bull Board (node-compat/board/server.js) on the queues bullwait serves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bullmq import Job

from bullwait.runtime.dispatch import Registry
from bullwait.runtime.runner import run_workers
from bullwait.settings import Settings
from bullwait.waitlist.catalog import QueueKey
from bullwait.waitlist.payloads import NotificationJob
from bullwait.waitlist.producer import Producer, new_expiry

from helpers.common import wait_job_state
from helpers.jobdata import notification_data
from helpers.nodecompat import (  # noqa: F401 (fixtures)
    BOARD_PASSWORD,
    BOARD_USER,
    env_without,
    node_json,
    node_required,
    run_node,
    start_board,
    start_node,
)

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
    from bullwait.dev.embedded import free_port

    port = free_port()
    open_board = start_node(
        "board/server.js",
        extra_env={"BULL_BOARD_AUTH": "off", "BULL_BOARD_PORT": str(port)},
        ready="bull board listening",
    )
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
    assert {q["name"] for q in queues} == {
        "waitlist-expiry",
        "waitlist-notification",
        "waitlist-preference-calculation",
    }
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
            job_id = await producer.add(
                QueueKey.WAITLIST_NOTIFICATION,
                NotificationJob.model_validate(notification_data("w-r")),
                job_id="note-retry",
                attempts=1,
            )
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


# --- cross-site writes, Host, blank passwords, Redis down ------------------------------------

ADD = "/api/queues/waitlist-expiry/add"
JOB = '{"name": "check-expiry", "data": {"waitlistId": "w-csrf"}}'


def test_board_refuses_cross_site_writes(start_board, sync_redis, prefix) -> None:  # type: ignore[no-untyped-def]
    """What a web page can make a browser send with the operator's cached login is refused."""
    board = start_board()
    own = f"http://127.0.0.1:{board.port}"
    evil = "http://evil.example"
    refused = [
        ({"Content-Type": "text/plain"}, 415),  # CORS-simple: no preflight, credentials sent
        ({"Content-Type": "text/plain;charset=UTF-8", "Origin": own}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({"Content-Type": "application/json", "Origin": evil}, 403),
        ({"Content-Type": "application/json", "Origin": "null"}, 403),
        ({"Content-Type": "application/json", "Referer": f"{evil}/page"}, 403),
    ]
    for headers, status in refused:
        response = board.client.post(ADD, content=JOB, headers=headers)
        assert response.status_code == status, (headers, response.status_code, response.text)
    assert board.put("/api/queues/waitlist-expiry/pause", headers={"Origin": evil}).status_code == 403
    assert not sync_redis.exists(f"{prefix}:waitlist-expiry:wait"), "a refused request added a job"
    assert not sync_redis.hexists(f"{prefix}:waitlist-expiry:meta", "paused")

    # The board's own UI (JSON, its own origin; body-less PUTs) and non-browser clients still work.
    for extra in ({"Origin": own}, {}, {"Referer": f"{own}/admin/queues/"}):
        response = board.client.post(ADD, content=JOB, headers={"Content-Type": "application/json", **extra})
        assert response.status_code == 200, (extra, response.text)
    assert sync_redis.llen(f"{prefix}:waitlist-expiry:wait") == 3
    assert board.put("/api/queues/waitlist-expiry/pause", headers={"Origin": own}).status_code in (200, 204)
    assert sync_redis.hexists(f"{prefix}:waitlist-expiry:meta", "paused")


def test_board_answers_only_to_its_own_host_names(start_board) -> None:  # type: ignore[no-untyped-def]
    """DNS rebinding: a page on evil.example whose name now resolves to the board is same-origin, but not allowed."""
    import httpx

    board = start_board(extra_env={"BULL_BOARD_ALLOWED_HOSTS": "board.example.com, ops.internal"})
    for host in ("evil.example", f"evil.example:{board.port}", "127.0.0.1.evil.example", ""):
        response = board.get("/api/queues", headers={"Host": host})
        assert response.status_code == 421 and "BULL_BOARD_ALLOWED_HOSTS" in response.text, (host, response.status_code)
    assert httpx.get(f"http://127.0.0.1:{board.port}/healthz", headers={"Host": "evil.example"}).status_code == 421
    for host in (f"127.0.0.1:{board.port}", f"localhost:{board.port}", "board.example.com", "OPS.internal:443"):
        assert board.get("/api/queues", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("blank", ["user", "password"])
def test_board_refuses_a_blank_login(env: dict[str, str], blank: str) -> None:
    login = {"BULL_BOARD_USER": "ops", "BULL_BOARD_PASSWORD": "s3cret"}
    name = f"BULL_BOARD_{blank.upper()}"
    login[name] = " \t "
    proc = run_node(dict(env, BULL_BOARD_PORT="0", **login), "board/server.js", check=False, timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "blank" in lines[0], proc.stderr
    assert "listening" not in proc.stdout and "s3cret" not in proc.stdout + proc.stderr


def test_board_with_redis_down_logs_one_line_per_retry(start_node) -> None:  # type: ignore[no-untyped-def]
    from bullwait.dev.embedded import RedisServer, free_port

    redis_port = free_port()  # nothing listens here until the end
    board = start_node(
        "board/server.js",
        extra_env={
            "BULL_BOARD_PORT": str(free_port()),
            "BULL_BOARD_USER": BOARD_USER,
            "BULL_BOARD_PASSWORD": BOARD_PASSWORD,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        },
        ready="bull board listening",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and board.log().count("unreachable") < 3:
        time.sleep(0.1)
    lines = board.log().splitlines()
    retries = [line for line in lines if line.startswith("bull-board: redis ") and "unreachable" in line]
    assert len(retries) >= 3, board.log()
    # Only the start line and one line per reconnect attempt: no stack traces, no duplicates per queue.
    others = [line for line in lines if "listening" not in line and line not in retries]
    assert not others, "\n".join(others[:20])
    assert "ECONNREFUSED" in retries[0] and f"127.0.0.1:{redis_port}/0" in retries[0]

    # When Redis comes up, the board says so once and serves the queues.
    server = RedisServer(port=redis_port, appendonly=False).start()
    try:
        board.wait_for_log("reachable again", timeout=40)
        assert board.log().count("reachable again") == 1
    finally:
        board.stop()
        server.cleanup()
