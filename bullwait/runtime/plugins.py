"""Extra processors for `bullwait worker`, named by `BULLWAIT_PROCESSORS`.

    BULLWAIT_PROCESSORS=myapp.jobs:register bullwait worker

`module:function` (several separated by commas) is imported and called with the
`Registry` the worker will run; it registers its processors into it (a registration
for a (queue, job name) that is already there replaces the built-in one) or returns a
`Registry` to use instead. A `module:attribute` that is a `Registry` is merged in.
A name that cannot be imported or called stops the worker with one line (exit 2).
"""

from __future__ import annotations

import importlib
from typing import Any

from bullwait.errors import PluginError
from bullwait.runtime.dispatch import Registry
from bullwait.runtime.processors import builtin_registry
from bullwait.settings import Settings

SETTING = "BULLWAIT_PROCESSORS"


def load_registry(settings: Settings, base: Registry | None = None) -> Registry:
    """The built-in registry (or `base`) with every plugin of `BULLWAIT_PROCESSORS` applied."""
    registry = base if base is not None else builtin_registry()
    for spec in parse_specs(settings.bullwait_processors):
        registry = apply_plugin(registry, spec)
    return registry


def parse_specs(value: str | None) -> list[str]:
    specs = [part.strip() for part in (value or "").split(",") if part.strip()]
    for spec in specs:
        module, _, attr = spec.partition(":")
        if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
            raise PluginError(f"{SETTING}: {spec!r} is not module:function (e.g. myapp.jobs:register)")
    return specs


def apply_plugin(registry: Registry, spec: str) -> Registry:
    target = _resolve(spec)
    if isinstance(target, Registry):
        registry.merge(target)
        return registry
    if not callable(target):
        raise PluginError(f"{SETTING}: {spec} is neither a function nor a Registry")
    try:
        result = target(registry)
    except Exception as exc:  # a plugin's own bug: say whose, in one line
        raise PluginError(f"{SETTING}: {spec} raised {type(exc).__name__}: {exc}") from None
    if result is None:
        return registry
    if isinstance(result, Registry):
        return result
    raise PluginError(f"{SETTING}: {spec} returned {type(result).__name__}; return None or a Registry")


def _resolve(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"{SETTING}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); check PYTHONPATH"
        ) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise PluginError(f"{SETTING}: module {module_name!r} has no {attr_path!r}") from None
    return target
