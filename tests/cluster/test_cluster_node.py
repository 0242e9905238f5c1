"""The Node side on a Redis Cluster (node-compat/lib/config.js reads REDIS_CLUSTER_NODES into an
ioredis.Cluster): the NestJS module adds and cancels timers, Bull Board shows the queues, and
`bullwait stats` reads what they wrote; under the current names and under tagged names
(`{waitlist-expiry}`, ...), whose braces the board takes in its URLs."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import quote

import pytest

from bullwait.settings import Settings
from bullwait.waitlist.catalog import TAGGED_QUEUE_NAMES, QueueKey, queue_name

from helpers.cli import invoke_cli
from helpers.cluster import ClusterSet, tagged_env
from helpers.common import ROOT
from helpers.nodecompat import (  # noqa: F401 (fixtures)
    BOARD_PASSWORD,
    BOARD_USER,
    browser_required,
    nest,
    node_json,
    node_required,
    seed_booking,
    seed_entry,
    seed_slot,
    start_board,
    start_node,
)

pytestmark = node_required


STATES = ("waiting", "active", "completed", "failed", "delayed", "prioritized")


def produce(nenv: dict[str, str]) -> None:
    """Three timers (one cancelled), an offer and a preference job: every queue holds jobs."""
    for i in range(3):
        nest(
            nenv,
            "notifyWaitlistCustomer",
            {"waitlistEntry": seed_entry(f"w-{i}"), "slot": seed_slot(), "delayMs": 600_000},
        )
    nest(nenv, "cancelExpiryTimer", {"waitlistId": "w-0"})
    nest(nenv, "sendSlotAvailableNotification", {"waitlistEntry": seed_entry("w-1"), "slot": seed_slot()})
    nest(nenv, "calculatePreferencesAfterBooking", {"customerId": "cust-1", "booking": seed_booking()})


def board_env(nenv: dict[str, str]) -> dict[str, str]:
    """The board's env on top of the single-server one (`start_board`): the cluster's settings."""
    names = ("REDIS_CLUSTER_NODES", "BULLMQ_PREFIX", "REDIS_QUEUE_DB", "BULLWAIT_QUEUE_NAMES")
    return {"REDIS_URL": "", **{name: nenv[name] for name in names if name in nenv}}


def test_nest_and_board_on_a_cluster(
    cluster: ClusterSet, nenv: dict[str, str], nsettings: Settings, start_board: Any
) -> None:
    bull = nenv["BULLMQ_PREFIX"]
    names = {key: queue_name(key, nsettings) for key in QueueKey}
    expiry = names[QueueKey.WAITLIST_EXPIRY]
    produce(nenv)
    for job_id in ("expiry_w-1", "expiry_w-2"):
        key = f"{bull}:{expiry}:{job_id}"
        assert cluster.client(cluster.master_for(key)).exists(key) == 1

    stats = {row["name"]: row for row in json.loads(invoke_cli(nenv, "stats", "--json").stdout)}
    assert set(stats) == set(names.values())
    assert stats[expiry]["delayed"] == 2
    assert all(stats[name]["prioritized"] == 1 for key, name in names.items() if key is not QueueKey.WAITLIST_EXPIRY)

    board = start_board(extra_env=board_env(nenv))
    assert "redis cluster://127.0.0.1:" in board.proc.log()
    queues = {q["name"]: q for q in board.get("/api/queues").json()["queues"]}
    assert set(queues) == set(names.values())
    for name, queue in queues.items():
        assert {s: queue["counts"][s] for s in STATES} == {s: stats[name][s] for s in STATES}, name

    # A queue's own routes take its name as a path segment: braces percent-encoded, as the
    # board's UI (encodeURIComponent) and browsers send them, and raw, as curl does.
    for path in (quote(expiry, safe=""), expiry):
        job = get_raw(board, f"/api/queues/{path}/expiry_w-1")
        assert (job["job"]["id"], job["job"]["data"]["waitlistId"], job["status"]) == ("expiry_w-1", "w-1", "delayed")
        assert get_raw(board, f"/api/queues/{path}/workers")["workers"] == []
    listing = board.get("/api/queues", params={"activeQueue": expiry, "status": "delayed"}).json()
    jobs = next(q for q in listing["queues"] if q["name"] == expiry)["jobs"]
    assert sorted(j["id"] for j in jobs) == ["expiry_w-1", "expiry_w-2"]


def get_raw(board: Any, path: str) -> Any:
    """GET `path` exactly as written (httpx would percent-encode braces)."""
    conn = http.client.HTTPConnection("127.0.0.1", board.port, timeout=10)
    try:
        login = base64.b64encode(f"{BOARD_USER}:{BOARD_PASSWORD}".encode()).decode()
        conn.request("GET", f"/admin/queues{path}", headers={"Authorization": f"Basic {login}"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (path, response.status, body[:300])
        return json.loads(body)
    finally:
        conn.close()


@browser_required[-1]
def test_board_page_shows_tagged_queues_on_a_cluster(
    cluster: ClusterSet, cenv: dict[str, str], start_board: Any
) -> None:
    """A browser renders the board for brace names: the overview lists the three queues, a
    queue's page shows its job, and the page's own PUT promotes it."""
    tenv = dict(tagged_env(cenv))
    cluster.spread(list(TAGGED_QUEUE_NAMES.values()))
    produce(tenv)
    board = start_board(extra_env=board_env(tenv))
    expiry = TAGGED_QUEUE_NAMES[QueueKey.WAITLIST_EXPIRY]
    (ROOT / "artifacts").mkdir(exist_ok=True)
    png = ROOT / "artifacts" / "bull-board-tagged-cluster.png"
    png.unlink(missing_ok=True)
    overview = ",".join(TAGGED_QUEUE_NAMES[key] for key in QueueKey)
    args = (board.base, BOARD_USER, BOARD_PASSWORD, expiry, "delayed", "expiry_w-1", str(png), overview)
    result = node_json(tenv, "compat/browser.js", *args, timeout=120)
    print(f"\nbrowser: {result}")
    assert result["found"] is True and result["overview"] == overview.split(",")
    assert quote(expiry, safe="") in result["url"]
    assert png.stat().st_size > 10_000
    assert result["promote"] in (200, 204), result
    key = f"{tenv['BULLMQ_PREFIX']}:{expiry}:delayed"
    assert cluster.client(cluster.master_for(key)).zscore(key, "expiry_w-1") is None, (
        "the promoted job is still delayed"
    )


@pytest.mark.parametrize("prefix_value", ["bull", "{}"])
def test_node_refuses_an_untagged_prefix_in_one_line(cenv: dict[str, str], prefix_value: str) -> None:
    from helpers.nodecompat import run_node

    proc = run_node(dict(cenv, BULLMQ_PREFIX=prefix_value), "compat/inspect.js", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BULLMQ_PREFIX" in lines[0] and "hash tag" in lines[0], proc.stderr
