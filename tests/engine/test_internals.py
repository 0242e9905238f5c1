"""bullwait refuses bullmq-py and redis-py versions it was not tested with, at import of the
engine, naming the installed and the supported versions and what to do."""

from __future__ import annotations

import os
import subprocess
import sys

import bullmq
import pytest
import redis

from bullwait.engine import internals
from bullwait.engine.internals import ALLOW_UNTESTED_ENV, check_compatibility, compatibility_problems
from bullwait.errors import BullwaitError, UnsupportedClientVersion


def test_installed_versions_are_supported() -> None:
    assert compatibility_problems() == []
    check_compatibility()


@pytest.mark.parametrize(
    ("module", "version", "named"),
    [(bullmq, "3.5.0", "bullmq-py 3.5.0"), (bullmq, "3.4.3", "bullmq-py 3.4.3"), (redis, "8.2.0", "redis-py 8.2.0")],
)
def test_other_versions_are_refused(monkeypatch: pytest.MonkeyPatch, module: object, version: str, named: str) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(module, "__version__", version)
    with pytest.raises(UnsupportedClientVersion) as caught:
        check_compatibility()
    message = str(caught.value)
    assert named in message
    assert "bullmq>=3.4.4,<3.5" in message and "redis>=8.1.0,<8.2" in message
    assert ALLOW_UNTESTED_ENV in message and "docs/upgrading-bullmq.md" in message
    assert isinstance(caught.value, BullwaitError)


def test_untested_versions_run_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bullmq, "__version__", "3.6.0")
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    check_compatibility()


def test_a_script_whose_key_count_changed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(internals.KEY_COUNTS, "moveToFinished", 13)
    assert compatibility_problems() == ["bullmq's moveToFinished script takes 14 keys, bullwait passes 13"]


def test_a_worker_method_renamed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(bullmq.Worker, "waitForJob")
    assert compatibility_problems() == ["bullmq.Worker has no method waitForJob()"]


def test_every_script_bullwait_runs_is_found() -> None:
    for name in internals.KEY_COUNTS:
        assert internals.script_source(name).strip()


def test_import_of_the_engine_fails_with_the_message() -> None:
    code = "import bullmq; bullmq.__version__ = '4.0.0'; import bullwait.engine"
    env = {k: v for k, v in os.environ.items() if k != ALLOW_UNTESTED_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "UnsupportedClientVersion: bullmq-py 4.0.0 is installed; bullwait supports bullmq>=3.4.4,<3.5" in done.stderr


def test_the_cli_refuses_an_unsupported_client_in_one_line() -> None:
    code = "import bullmq; bullmq.__version__ = '4.0.0'; from bullwait.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != ALLOW_UNTESTED_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.startswith("bullwait: error: bullmq-py 4.0.0 is installed;"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
