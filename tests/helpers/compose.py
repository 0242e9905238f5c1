"""docker-compose.yml read as compose reads it, without a Docker engine.

Variables are resolved as compose resolves them (`$$`, `${VAR}`, `:-`, `-`, `:?`, `?`, `:+`,
`+`; an `environment` entry without a value is taken from the shell or `.env`, else left
unset), so a test sees what a container would get; a service's `sh -c` command runs in a real
shell with `printf` in place of the program it execs, which gives its argv.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from helpers.common import ROOT

COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


class MissingVariable(Exception):
    pass


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = env.get(name)
        unset, empty = value is None, not value
        if op is None:
            return value or ""
        if op in (":?", "?") and (empty if op == ":?" else unset):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else unset) else str(value)
        if op in (":+", "+"):
            return "" if (empty if op == ":+" else unset) else arg
        return str(value)

    return VARIABLE.sub(one, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """The compose file with every string interpolated (raises MissingVariable like compose)."""
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def container_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """What the container's environment holds: a valueless entry comes from `env` or is unset."""
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment must be a mapping"
    out = {}
    for key, value in raw.items():
        if value is None:
            if key in env:
                out[key] = env[key]
        else:
            out[key] = interpolate(str(value), env)
    return out


def exec_argv(
    compose: dict[str, Any], name: str, env: Mapping[str, str], program: str = "redis-server", path: str = ""
) -> list[str]:
    """The argv a service's `sh -c` command hands to `exec <program>`, run in a real shell with
    the container's environment; `path` goes before PATH (stand-ins for `hostname` and the like)."""
    service = compose["services"][name]
    command = resolve(service["command"], env)
    assert command[:2] == ["sh", "-c"] and f"exec {program} " in command[2], name
    script = command[2].replace(f"exec {program} ", "printf '%s\\n' ", 1)
    shell_env = {"PATH": f"{path}:{os.environ['PATH']}" if path else os.environ["PATH"], **container_env(service, env)}
    out = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.splitlines()
