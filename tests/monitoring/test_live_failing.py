"""/health/live answers 503 while a worker loop keeps failing, whatever the cause, and 200
again once it works: a worker that cannot process is restarted or taken out, not reported fine.

The cause here: an ACL user that may connect, PING and INFO (so the worker starts) but not
run scripts, so every fetch fails with NOPERM."""

from __future__ import annotations

import json
import uuid

import redis

from bullwait.dev.embedded import RedisServer, free_port

from helpers.common import wait_until
from helpers.monitoring import get


def live(port: int) -> tuple[int, dict]:
    status, body = get(port, "/health/live")
    return status, json.loads(body)


def test_live_turns_unhealthy_while_the_worker_loop_keeps_failing(
    start_worker, env: dict[str, str], redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    user, password = f"nofetch-{uuid.uuid4().hex[:6]}", "pw-" + uuid.uuid4().hex[:8]
    sync_redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-evalsha", "-eval")
    port = free_port()
    worker = start_worker(
        "--queue",
        "expiry",
        extra_env={
            "REDIS_URL": f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0",
            "METRICS_PORT": str(port),
            "HEALTH_LIVE_FAILING_SECONDS": "2",
        },
    )
    try:
        status, doc = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(live(port)), timeout=30)
        print("live while failing:", status, doc)
        assert doc["status"] == "worker-failing"
        assert "NOPERM" in doc["problem"] or "permission" in doc["problem"].lower()
        # The cause goes away: the next fetch works and the process is live again.
        sync_redis.execute_command("ACL", "SETUSER", user, "+evalsha", "+eval")
        wait_until(lambda: live(port)[0] == 200, timeout=30, message="/health/live 200 again")
    finally:
        worker.terminate()
        sync_redis.execute_command("ACL", "DELUSER", user)
