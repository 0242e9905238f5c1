"""The CLI in this process: `bullwait.cli.main.run`, the console script's own entry point, under
Typer's CliRunner isolation (environment, stdin/stdout/stderr). Starting an interpreter per case
costs more than most argument checks; keep `run_cli` (a real subprocess) where the process
boundary is the point: exit codes of the installed entry point, signals, output of a dying process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import structlog
from typer.testing import CliRunner

import bullwait.logs
from bullwait.cli.main import run


def invoke_cli(
    env: dict[str, str], *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bullwait *args` with exactly `env` as its environment; the result reads like `run_cli`'s.

    The command runs on its own thread, as `run_cli` blocks the caller: a command's event loop
    neither meets an async test's running loop nor resets the main thread's current loop.
    """
    # CliRunner only overrides: variables the caller left out must be unset, as in a subprocess.
    overrides: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    overrides.update(env)
    saved_logging = _logging_state()
    saved_argv = sys.argv
    code: Any = 0
    try:
        with CliRunner().isolation(input=input, env=overrides) as (out, err, _):
            sys.argv = ["bullwait", *args]
            try:
                code = _run_on_a_thread(args, timeout)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                stdout, stderr = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
    finally:
        sys.argv = saved_argv
        _restore_logging(saved_logging)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): the message goes to stderr, exit 1
        stderr, code = stderr + f"{code}\n", 1
    return subprocess.CompletedProcess(["bullwait", *args], code, stdout, stderr)


def _run_on_a_thread(args: tuple[str, ...], timeout: float) -> Any:
    outcome: dict[str, Any] = {"code": 0}

    def target() -> None:
        try:
            run()
        except SystemExit as exc:
            outcome["code"] = exc.code
        except BaseException as exc:  # re-raised in the caller, as a crash would fail the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="bullwait-cli", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"`bullwait {' '.join(args)}` still running after {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def _logging_state() -> tuple[bool, dict[str, Any], Any]:
    return structlog.is_configured(), structlog.get_config(), bullwait.logs._stream


def _restore_logging(state: tuple[bool, dict[str, Any], Any]) -> None:
    """A command configures structlog to write to the captured stderr, which is closed now."""
    configured, config, stream = state
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
    bullwait.logs._stream = stream
