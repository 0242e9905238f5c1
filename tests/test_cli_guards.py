"""The CLI's guards: bad URLs and numbers as one line, confirmations, orientation (issue 13).

In-process through Typer's CliRunner (no interpreter start per case); one subprocess test
keeps the real entry point honest.
"""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner, Result

from bullwait_cli.main import app

from conftest import BULLWAIT, ROOT

SECRET = "S3cretPw"
BAD_URL = f"redis://app:{SECRET}#1@localhost:6379/1"  # an unencoded '#' in the password

# Every command that reads settings, with the least arguments it needs to get that far.
ENTRY_POINTS = [
    ["worker"], ["serve"], ["demo", "--embedded-redis", "never"], ["stats"], ["clean", "--all"],
    ["retry", "--all"], ["promote", "--all"], ["pause", "expiry"], ["resume", "expiry"],
    ["jobs", "list", "expiry", "--status", "failed"], ["jobs", "show", "expiry", "x1"], ["cancel", "w-1"],
    ["doctor"], ["prefs", "c-1"], ["migrate-legacy", "--dry-run"],
]


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def assert_one_line(result: Result, expected: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize("args", ENTRY_POINTS, ids=lambda a: " ".join(a[:2]))
def test_every_entry_point_refuses_a_bad_url_in_one_line(env: dict[str, str], args: list[str]) -> None:
    for how in ("env", "flag"):
        if how == "env":
            result = invoke(dict(env, REDIS_URL=BAD_URL), *args)
        else:
            result = invoke(env, *args, "--redis-url", BAD_URL)
        line = assert_one_line(result, "REDIS_URL")
        assert "%23" in line and SECRET[:4] not in result.stdout + result.stderr, (how, line)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["clean", "-q", "expiry", "--grace", "1" + "0" * 400 + "s"], "--grace: '1000"),
        (["clean", "-q", "expiry", "--limit", str(10**30)], "--limit must be at most 1000000000 (got a 31-digit"),
        (["promote", "-q", "expiry", "--count", "10000000000"], "--count must be at most 1000000000"),
        (["retry", "-q", "expiry", "--count", str(10**30)], "--count must be at most"),
        (["stats", "--redis-url", "redis://["], "both brackets"),
        (["stats", "--redis-url", "redis://localhost:99999/1"], "1 to 65535 (got 99999)"),
        (["stats", "--redis-url", "redis://localhost:6379/abc"], "'abc' is not a database number"),
    ],
)
def test_odd_numbers_and_urls_are_one_line(env: dict[str, str], args: list[str], expected: str) -> None:
    line = assert_one_line(invoke(env, *args), expected)
    assert len(line) < 300, line


def test_real_entry_point_hides_the_password(env: dict[str, str]) -> None:
    """`bullwait worker` as installed: exit 2, one line on stderr, no password, no traceback."""
    result = subprocess.run([*BULLWAIT, "worker"], env=dict(env, REDIS_URL=BAD_URL), capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bullwait: error: invalid setting REDIS_URL"), result.stderr
    assert SECRET[:4] not in result.stderr + result.stdout
