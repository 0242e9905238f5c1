"""BULLWAIT_PROCESSORS: users plug their own processors into `bullwait worker`."""

from __future__ import annotations

import sys
import types

import pytest

from bullwait.errors import PluginError
from bullwait.runtime.dispatch import Registry
from bullwait.runtime.plugins import load_registry
from bullwait.settings import Settings
from bullwait.waitlist.catalog import JOB_NAMES, QueueKey
from bullwait.waitlist.payloads import ExpiryJob

from helpers.cli import invoke_cli
from helpers.common import ROOT


async def _custom(payload: ExpiryJob, ctx: object) -> str:
    return "custom"


@pytest.fixture
def plugin_module() -> types.ModuleType:
    module = types.ModuleType("bw_plugin_under_test")

    def register(registry: Registry) -> None:
        registry.register(QueueKey.WAITLIST_EXPIRY, JOB_NAMES["CHECK_EXPIRY"], ExpiryJob, _custom)
        registry.register(QueueKey.WAITLIST_EXPIRY, "check-expiry-v2", ExpiryJob, _custom)

    def replace(registry: Registry) -> Registry:
        fresh = Registry()
        fresh.register(QueueKey.WAITLIST_EXPIRY, "only-this", ExpiryJob, _custom)
        return fresh

    extra = Registry()
    extra.register(QueueKey.PREFERENCE_CALCULATION, "extra-job", ExpiryJob, _custom)
    module.register = register  # type: ignore[attr-defined]
    module.replace = replace  # type: ignore[attr-defined]
    module.extra = extra  # type: ignore[attr-defined]
    module.broken = lambda registry: 1 / 0  # type: ignore[attr-defined]
    module.number = 42  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_no_setting_gives_the_builtin_registry() -> None:
    registry = load_registry(Settings())
    assert set(registry.job_names(QueueKey.WAITLIST_EXPIRY)) == {"check-expiry"}


def test_register_adds_and_replaces(plugin_module: types.ModuleType) -> None:
    registry = load_registry(Settings(bullwait_processors="bw_plugin_under_test:register"))
    assert sorted(registry.job_names(QueueKey.WAITLIST_EXPIRY)) == ["check-expiry", "check-expiry-v2"]
    assert registry.lookup(QueueKey.WAITLIST_EXPIRY, "check-expiry").handler is _custom  # type: ignore[union-attr]
    assert registry.job_names(QueueKey.WAITLIST_NOTIFICATION) == ["send-slot-available"]


def test_returned_registry_replaces_and_registry_attribute_merges(plugin_module: types.ModuleType) -> None:
    replaced = load_registry(Settings(bullwait_processors="bw_plugin_under_test:replace"))
    assert replaced.job_names(QueueKey.WAITLIST_EXPIRY) == ["only-this"]
    merged = load_registry(Settings(bullwait_processors=" bw_plugin_under_test:extra , bw_plugin_under_test:register"))
    assert "extra-job" in merged.job_names(QueueKey.PREFERENCE_CALCULATION)
    assert "check-expiry-v2" in merged.job_names(QueueKey.WAITLIST_EXPIRY)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("no_colon", "is not module:function"),
        ("bad module:fn", "is not module:function"),
        ("surely_missing_module_xyz:fn", "cannot import 'surely_missing_module_xyz'"),
        ("bw_plugin_under_test:nope", "has no 'nope'"),
        ("bw_plugin_under_test:number", "neither a function nor a Registry"),
        ("bw_plugin_under_test:broken", "raised ZeroDivisionError"),
    ],
)
def test_bad_plugin_is_named(plugin_module: types.ModuleType, value: str, expected: str) -> None:
    with pytest.raises(PluginError) as info:
        load_registry(Settings(bullwait_processors=value))
    message = str(info.value)
    assert message.startswith("BULLWAIT_PROCESSORS:") and expected in message, message
    assert "\n" not in message


def test_worker_with_bad_plugin_exits_2_with_one_line(env: dict[str, str]) -> None:
    bad = dict(env, BULLWAIT_PROCESSORS="surely_missing_module_xyz:register", PYTHONPATH=str(ROOT / "tests"))
    result = invoke_cli(bad, "worker", timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BULLWAIT_PROCESSORS" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
