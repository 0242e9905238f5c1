"""Argument parsing of the operator commands: durations, job ids, counts; one-line errors, no tracebacks."""

from __future__ import annotations

import pytest

from bullwait.engine.worker import node_client_name
from bullwait.errors import BadArgument
from bullwait.ops.checks import check_count, normalize_state
from bullwait.ops.durations import BadDuration, format_ms, parse_duration_ms
from bullwait.ops.snapshot import count_workers
from bullwait.waitlist.jobids import check_job_id

from helpers.cli import invoke_cli
from helpers.common import run_cli


@pytest.mark.parametrize(
    "text, ms",
    [
        ("0", 0),
        ("30s", 30_000),
        ("15m", 900_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        ("500ms", 500),
        ("1h30m", 5_400_000),
        ("1.5s", 1500),
        (" 2H ", 7_200_000),
        ("1w", 604_800_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "10", "-5m", "5 m", "5x", "m", "1h-", "24hours", "1e3s", "abc"])
def test_bad_durations_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(BadDuration) as info:
        parse_duration_ms(text, "--grace")
    assert "--grace" in str(info.value) and "24h" in str(info.value)
    assert "\n" not in str(info.value)


def test_format_ms() -> None:
    assert [format_ms(v) for v in (None, 850, 12_300, 245_000, 7_380_000, 273_600_000, -120_500)] == [
        "-",
        "850ms",
        "12.3s",
        "4m05s",
        "2h03m",
        "3d04h",
        "-2m00s",
    ]


@pytest.mark.parametrize("bad", ["", "   ", " padded", "a\nb", "tab\there", "nul\x00", "x" * 513])
def test_odd_job_ids_are_refused(bad: str) -> None:
    with pytest.raises(BadArgument):
        check_job_id(bad)


@pytest.mark.parametrize("good", ["17", "expiry_w-1", "expiry_ñandú", "a:b:c", "with space", "*?[]", "x" * 512])
def test_job_ids_producers_can_write_are_accepted(good: str) -> None:
    assert check_job_id(good) == good


def test_counts_and_states() -> None:
    assert check_count(None, "--limit") is None and check_count(3, "--limit") == 3
    for bad in (0, -1):
        with pytest.raises(BadArgument, match="--limit must be 1 or more"):
            check_count(bad, "--limit")
    assert normalize_state("waiting") == "wait" and normalize_state("FAILED") == "failed"
    with pytest.raises(BadArgument, match="unknown status 'done'"):
        normalize_state("done")


def test_worker_count_from_client_names() -> None:
    """Connection names exactly as each runtime sets them (see test_ops_stats for live workers)."""
    p, q = "bull", "waitlist-expiry"
    py = f"{p}:{q}"
    clients = [
        {"name": node_client_name(p, q, None), "cmd": "bzpopmin"},  # Node worker, unnamed
        {"name": node_client_name(p, q, "nest-1"), "cmd": "bzpopmin"},  # Node worker, named
        {"name": node_client_name(p, q, "nest-1"), "cmd": "bzpopmin"},  # same name, another pod
        {"name": node_client_name(p, q, "bullwait-h-1"), "cmd": "bzpopmin"},  # BullwaitWorker: blocking
        {"name": f"{py}:w:bullwait-h-1", "cmd": "evalsha"},  # ... and its main pool
        {"name": f"{py}:w:bullwait-h-1", "cmd": "evalsha"},
        {"name": py, "cmd": "bzpopmin"},  # stock bullmq-py worker, unnamed: blocking
        {"name": py, "cmd": "evalsha"},  # ... and main
        {"name": f"{py}:w:stock", "cmd": "client|setname"},  # stock worker not yet blocking
        {"name": node_client_name(p, q, None) + ":qe", "cmd": "xread"},  # QueueEvents: not a worker
        {"name": f"{p}:waitlist-notification", "cmd": "bzpopmin"},  # another queue
        {"name": "", "cmd": "client|list"},
    ]
    assert count_workers(clients, p, q) == (6, 3, 3)


def test_cli_bad_arguments_are_one_line(env: dict[str, str]) -> None:
    cases = [
        (["stats", "--queue", "nope"], "unknown queue 'nope'"),
        (["clean", "--queue", "expiry", "--grace", "soon"], "--grace: cannot read 'soon'"),
        (["clean", "--queue", "expiry", "--limit", "-1"], "--limit must be 1 or more"),
        (["clean", "--queue", "expiry", "--status", "done"], "unknown status 'done'"),
        (["clean"], "--queue Q (repeatable) or --all"),
        (["retry", "--all", "--count", "0"], "--count must be 1 or more"),
        (["promote", "--all", "--count", "many"], "Invalid value for '--count'"),
        (["jobs", "list", "expiry", "--status", "failed", "--limit", "-5"], "--limit must be 1 or more"),
        (["jobs", "list", "expiry"], "Missing option '--status'"),
        (["jobs", "show", "expiry", "bad\nid"], "control characters"),
        (["jobs", "show", "expiry", " "], "job id is empty"),
        (["cancel"], "give either a WAITLIST_ID or --queue Q --job JOB_ID"),
        (["cancel", "--job", "x"], "--job needs --queue"),
        (["cancel", "w\t1"], "waitlist id"),
        (["stats", "--watch", "0"], "--watch must be between"),
        (["pause", "waitlist:nothing"], "unknown queue"),
        (["stats", "--redis-url", "http://x"], "REDIS_URL"),
    ]
    for args, expected in cases:
        result = invoke_cli(env, *args)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout


def test_installed_entry_point_usage_error_is_one_line(env: dict[str, str]) -> None:
    """The same check through a real process: exit status and stderr as a shell sees them."""
    result = run_cli(env, "promote", "--all", "--count", "many", timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Invalid value for '--count'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_every_command_help_has_an_example(env: dict[str, str]) -> None:
    commands = [
        "stats",
        "cancel",
        "clean",
        "retry",
        "promote",
        "pause",
        "resume",
        "doctor",
        "jobs",
        "jobs list",
        "jobs show",
    ]
    for command in commands:
        result = invoke_cli(env, *command.split(), "--help")
        assert result.returncode == 0 and "Example:" in result.stdout, (command, result.stdout)
        assert "--redis-url" in result.stdout or command == "jobs", command
