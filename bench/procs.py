"""Starting and stopping the benchmark's worker processes (Python and Node)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "node-compat"
NODE_BENCH = NODE_DIR / "bench"


def node_available() -> bool:
    return (NODE_DIR / "node_modules" / "bullmq").is_dir() and bool(_which("node"))


def _which(name: str) -> str | None:
    from shutil import which

    return which(name)


class Proc:
    """A benchmark child process that prints `ready` and writes its JSON result on SIGTERM."""

    def __init__(self, argv: list[str], out: str | None, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.out = out
        self.log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=self.log, env=env or dict(os.environ, PYTHONUNBUFFERED="1")
        )

    def wait_ready(self, timeout: float = 30, word: bytes = b"ready") -> Proc:
        """Wait for `word` on the child's stdout (its first line saying it serves)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                buf += chunk
                if word in buf:
                    self.ready_line = buf.decode(errors="replace").strip()
                    return self
                if not chunk:
                    break
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.proc.args[:3]} not ready: exit {self.proc.poll()}\n{self.stderr()}")

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Stuck: have it print its Python stacks (faulthandler, see pyworker) before the kill.
            self.proc.send_signal(signal.SIGUSR1)  # threads' stacks (faulthandler, set at start)
            time.sleep(1)
            self.proc.send_signal(signal.SIGUSR2)  # asyncio tasks' stacks (while its loop runs)
            time.sleep(1)
            self.proc.kill()
            code = self.proc.wait()
        if code != 0:
            raise RuntimeError(f"{self.proc.args[:3]} {self.proc.args[3:][:1]} exited {code}\n{self.stderr()}")
        os.unlink(self.log.name)
        if self.out and os.path.exists(self.out):
            with open(self.out) as fh:
                data = json.load(fh)
            os.unlink(self.out)
            return data
        return {}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and its live descendants (Linux /proc; else None)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    if pid not in stats:
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats[current][1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


def _out() -> str:
    fd, path = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    os.unlink(path)
    return path


def start_worker(kind: str, **opts: Any) -> Proc:
    """kind: bullwait | bare | stock | node. opts: redisUrl, prefix, mode, concurrency, ..."""
    out = _out()
    o = dict(opts, kind=kind, out=out)
    if kind == "node":
        o["queue"] = o.get("queue", "waitlist-expiry")
        o["redisUrl"] = o["redisUrl"]
        return Proc(["node", str(NODE_BENCH / "worker.js"), json.dumps(o)], out, cwd=NODE_DIR).wait_ready()
    return Proc([sys.executable, "-m", "bench.pyworker", json.dumps(o)], out).wait_ready()


def run_node_enqueue(**opts: Any) -> dict[str, Any]:
    out = _out()
    o = dict(opts, out=out)
    subprocess.run(["node", str(NODE_BENCH / "enqueue.js"), json.dumps(o)], cwd=NODE_DIR, check=True, timeout=600)
    with open(out) as fh:
        data = json.load(fh)
    os.unlink(out)
    return data


def start_probe(redis_url: str, interval_ms: float = 5) -> Proc:
    """bench/probe.py: PINGs Redis every `interval_ms` from its own process until stopped."""
    out = _out()
    o = {"redisUrl": redis_url, "intervalMs": interval_ms, "out": out}
    return Proc([sys.executable, "-m", "bench.probe", json.dumps(o)], out).wait_ready()
