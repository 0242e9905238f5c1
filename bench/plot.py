"""`python -m bench.plot RESULTS.json [-o docs/img/growth.png]`: the growth section as a PNG.

Four panels over the number of pending timers (log scale), bullwait beside Node bullmq:
timers added/s, Redis bytes per pending timer, reading the queue (ms; the 50 ms goal drawn)
and timer lateness p50/p99 of the timers due among them.

matplotlib comes with the `bench` extra (`pip install -e '.[bench]'`) and is imported only
here, when a plot is drawn, so the rest of bench/ runs without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import GOAL_MS

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "growth.png"
COLORS = {"bullwait": "tab:blue", "node": "tab:green"}


def _series(g: dict[str, Any], runtime: str, *path: str) -> tuple[list[int], list[float]]:
    """(sizes, values) of one figure of one runtime, leaving out sizes without it."""
    xs, ys = [], []
    for n in g.get("sizes", []):
        value: Any = g.get(f"{n}:{runtime}")
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            xs.append(n)
            ys.append(float(value))
    return xs, ys


def plot(results: dict[str, Any], out: Path) -> Path:
    """Draw `results["growth"]` into `out` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    g = results.get("growth")
    if not g or not g.get("sizes"):
        raise ValueError("these results have no growth section: run `python -m bench --only growth`")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    (rate, memory), (readers, lateness) = axes
    for runtime in g.get("runtimes", ["bullwait", "node"]):
        color = COLORS.get(runtime)
        label = "Node bullmq" if runtime == "node" else runtime
        rate.plot(*_series(g, runtime, "enqueue", "rate"), "o-", color=color, label=label)
        memory.plot(*_series(g, runtime, "enqueue", "bytesPerTimer"), "o-", color=color, label=label)
        lateness.plot(*_series(g, runtime, "lateness", "p99"), "o-", color=color, label=f"{label} p99")
        lateness.plot(*_series(g, runtime, "lateness", "p50"), "o--", color=color, alpha=0.6, label=f"{label} p50")
        # The machine's load during the run: on a shared machine it, not N, moves the p99.
        for n, p99 in zip(*_series(g, runtime, "lateness", "p99")):
            row = g[f"{n}:{runtime}"]
            lateness.annotate(
                f"load {row.get('loadAverageStart', 0):.0f}-{row.get('loadAverageEnd', 0):.0f}",
                (n, p99),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="x-small",
                color=color,
            )
    # Readers on bullwait's fill; Bull Board on Node's (each runtime's own data).
    board = ("readers", "board", "latest", "medianMs")
    for label, runtime, path, style, color in (
        ("/metrics scrape (wall)", "bullwait", ("readers", "metrics", "medianMs"), "o-", COLORS["bullwait"]),
        ("bullwait stats (in process)", "bullwait", ("readers", "inProcess", "statsMedianMs"), "s-", "tab:orange"),
        ("bullwait doctor (in process)", "bullwait", ("readers", "inProcess", "doctorMedianMs"), "^-", "tab:purple"),
        ("Bull Board api/queues (queue page)", "node", board, "o-", COLORS["node"]),
    ):
        readers.plot(*_series(g, runtime, *path), style, color=color, label=label)
    readers.axhline(GOAL_MS, color="tab:red", linestyle=":", label=f"goal {GOAL_MS} ms")
    titles = (
        (rate, "timers added per second", "timers/s"),
        (memory, "Redis bytes per pending timer", "bytes"),
        (readers, "reading the queue, median", "ms"),
        (lateness, f"lateness of {g.get('batch', 0):,} timers due among them (median round)", "ms"),
    )
    for ax, title, unit in titles:
        ax.set_xscale("log")
        ax.set_xticks(g["sizes"], [f"{n:,}" for n in g["sizes"]])
        ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel("pending timers")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    loads = [
        row[key]
        for row in g.values()
        if isinstance(row, dict)
        for key in ("loadAverageStart", "loadAverageEnd")
        if isinstance(row.get(key), (int, float))
    ]
    where = f"Redis {results.get('redis', {}).get('version')}, {results.get('machine', {}).get('cpus')} CPUs"
    if loads:
        where += f", load average {min(loads):.1f}-{max(loads):.1f}"
    fig.suptitle(f"bullwait vs Node bullmq {results.get('startedAt', '')[:10]}: {where}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results JSON of `python -m bench` with a growth section")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"bench.plot: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    try:
        path = plot(results, args.out)
    except ModuleNotFoundError:
        print("bench.plot: matplotlib is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"bench.plot: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
