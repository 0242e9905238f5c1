"""The benchmark's table: every figure next to the Node figure of the same run, as a ratio."""

from __future__ import annotations

import math
from typing import Any

HEAD = ("figure", "bullwait", "stock py", "node", "bw/node", "target", "met")


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{a / b:.2f}x" if a is not None and b else "-"
    except TypeError:
        return "-"


def _cpu(row: dict[str, Any]) -> str:
    w, r = row.get("workerCpuUsPerJob"), row.get("redisCpuUsPerJob")
    return f"{w} + {r}" if w is not None and r is not None else "-"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    t = r.get("timers")
    if t:
        for hz, limit in ((10, 100), (100, 20)):
            get = lambda kind, key: (t.get(f"hz{hz}:{kind}") or {}).get(key)  # noqa: E731, B023 - called in this iteration
            due = round(t["n"] * t["observeS"] / t["spreadS"])
            out.append(
                (
                    f"timers run of ~{due:,} due in the window, hz {hz}",
                    _f(get("bullwait", "n")),
                    _f(get("stock", "n")),
                    _f(get("node", "n")),
                    _ratio(get("bullwait", "n"), get("node", "n")),
                    "all",
                    "-",
                )
            )
            for key in ("p50", "p99", "max"):
                bw = get("bullwait", key)
                target = f"<= {limit} ms" if key == "p99" else ""
                ok = (bw is not None and bw <= limit) if key == "p99" else None
                out.append(
                    (
                        f"timer lateness {key} ms, hz {hz} (n={get('bullwait', 'n')})",
                        _f(bw, 1),
                        _f(get("stock", key), 1),
                        _f(get("node", key), 1),
                        _ratio(bw, get("node", key)),
                        target,
                        _met(ok),
                    )
                )
        proc = (t.get("hz10:bullwait") or {}).get("procMs") or {}
        out.append(
            (
                "check-expiry processor p99 ms",
                _f(proc.get("p99"), 2),
                "",
                "",
                "",
                "< 10 ms",
                _met(proc.get("p99") is not None and proc["p99"] < 10),
            )
        )
    out.extend(_expiry_rows(r.get("expiry")))
    th = r.get("throughput")
    if th:
        for c in (10, 50):
            row = lambda label: th.get(f"c{c}:{label}") or {}  # noqa: E731, B023 - called in this iteration
            get = lambda label: row(label).get("rate")  # noqa: E731, B023
            bw, st, nd, bare = get("bullwait"), get("stock"), get("node"), get("bare")
            out.append(
                (
                    f"no-op jobs/s, concurrency {c} (median of {th.get('rounds', 1)})",
                    _f(bw),
                    _f(st),
                    _f(nd),
                    _ratio(bw, nd),
                    ">= 0.5x node",
                    _met(bool(bw and nd and bw >= 0.5 * nd)) if nd else "-",
                )
            )
            cpu = lambda label: _cpu(row(label))  # noqa: E731, B023
            out.append(("  CPU us per job: worker + redis", cpu("bullwait"), cpu("stock"), cpu("node"), "", "", ""))
            wcpu = lambda label: row(label).get("workerCpuUsPerJob")  # noqa: E731, B023
            if wcpu("bullwait") and wcpu("node"):
                out.append(
                    (
                        "  worker CPU per job vs Node",
                        "",
                        "",
                        "",
                        _ratio(wcpu("bullwait"), wcpu("node")),
                        "<= 1.00x",
                        _met(wcpu("bullwait") <= wcpu("node")),
                    )
                )
            per_cpu = lambda label: row(label).get("workerJobsPerCpuSecond")  # noqa: E731, B023
            out.append(
                (
                    "  jobs per worker CPU-second",
                    _f(per_cpu("bullwait")),
                    _f(per_cpu("stock")),
                    _f(per_cpu("node")),
                    _ratio(per_cpu("bullwait"), per_cpu("node")),
                    "",
                    "-",
                )
            )
            if bw and st:
                out.append(
                    (
                        "  bullwait vs stock bullmq-py (overhead)",
                        f"{(bw / st - 1) * 100:+.0f}%",
                        "",
                        "",
                        "",
                        "<= 5% slower",
                        _met(bw >= 0.95 * st),
                    )
                )
            if bw and bare:
                # bullwait's processing layer (dispatch, validation, logging, metrics hooks) on the same worker.
                w, wb = row("bullwait").get("workerCpuUsPerJob"), row("bare").get("workerCpuUsPerJob")
                cpu_delta = f", {(w / wb - 1) * 100:+.0f}% CPU" if w and wb else ""
                out.append(
                    (
                        "  processing layer vs bare BullwaitWorker",
                        f"{(bw / bare - 1) * 100:+.1f}%{cpu_delta}",
                        "",
                        "",
                        "",
                        "",
                        "-",
                    )
                )
            x2 = get("bullwait x2 processes")
            out.append(
                (
                    f"  bullwait --processes 2, c {c}",
                    _f(x2),
                    "",
                    _f(nd),
                    _ratio(x2, nd),
                    ">= 1.0x node",
                    _met(bool(x2 and nd and x2 >= nd)) if nd else "-",
                )
            )
            if x2:
                out.append(
                    ("  CPU us per job: 2 workers + redis", cpu("bullwait x2 processes"), "", cpu("node"), "", "", "")
                )
            uv = get("bullwait + uvloop")
            if uv:
                out.append((f"  bullwait + uvloop, c {c}", _f(uv), "", _f(nd), _ratio(uv, nd), "", "-"))
    e = r.get("enqueue")
    if e:
        bw, nd = e.get("bullwait", {}), e.get("node", {})
        out.append(
            (
                f"addBulk timers/s (n={e['n']})",
                _f(bw.get("rate")),
                "",
                _f(nd.get("rate")),
                _ratio(bw.get("rate"), nd.get("rate")),
                ">= 1.0x node",
                _met(bool(nd and bw.get("rate", 0) >= nd.get("rate", 0))) if nd else "-",
            )
        )
        awaited = e.get("nodeAwaited", {}).get("rate")
        if awaited:
            out.append(
                (
                    "  Node awaiting each addBulk (1 in flight)",
                    "",
                    "",
                    _f(awaited),
                    _ratio(bw.get("rate"), awaited),
                    "",
                    "-",
                )
            )
        out.append(
            (
                "Redis bytes per pending timer",
                _f(bw.get("bytesPerTimer")),
                "",
                _f(nd.get("bytesPerTimer")),
                _ratio(bw.get("bytesPerTimer"), nd.get("bytesPerTimer")),
                "< 1,024",
                _met(bw.get("bytesPerTimer", 1e9) < 1024),
            )
        )
        for kind, label, ref in (
            ("bullwait+listpack", "  same, hash-max-listpack-value 512", e.get("node+listpack", {})),
            ("bullwait+uuid", "  same, 36-char (UUID) ids", e.get("node+uuid", {})),
            (
                "bullwait+uuid+listpack",
                "  same, UUID ids, hash-max-listpack-value 512",
                e.get("node+uuid+listpack", {}),
            ),
        ):
            row = e.get(kind, {})
            if row:
                out.append(
                    (
                        label,
                        _f(row.get("bytesPerTimer")),
                        "",
                        _f(ref.get("bytesPerTimer")),
                        _ratio(row.get("bytesPerTimer"), ref.get("bytesPerTimer")),
                        "< 1,024",
                        _met(row.get("bytesPerTimer", 1e9) < 1024),
                    )
                )
        comp = e.get("completed", {})
        out.append(
            (
                f"Redis bytes per retained completed job (n={comp.get('n')})",
                _f(comp.get("bytesPerCompletedJob")),
                "",
                "",
                "",
                "",
                "-",
            )
        )
        if "bytesPerCompletedJobWithoutEvents" in comp:
            out.append(
                (
                    "  same, without the events stream's share",
                    _f(comp.get("bytesPerCompletedJobWithoutEvents")),
                    "",
                    "",
                    "",
                    "",
                    "-",
                )
            )
    g = r.get("growth")
    if g:
        out.extend(_growth_rows(g))
    n = r.get("notify")
    if n:
        for row in n.values():
            if not isinstance(row, dict):
                continue
            out.extend(_notify_rows(row))
        if "concurrencyFor95" in n:
            out.append(
                ("concurrency for >= 76 sends/s at 150 ms", str(n["concurrencyFor95"]), "", "", "", "<= default", "-")
            )
    return out


def _expiry_rows(m: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """Mass expiry: lateness and drain side by side, and how long Redis was blocked per phase."""
    if not m:
        return []
    bw, nd = m.get("bullwait") or {}, m.get("node") or {}
    late = lambda row, key: (row.get("lateness") or {}).get(key)  # noqa: E731
    out: list[tuple[str, ...]] = []
    head = f"mass expiry: {m['n']:,} timers due within {m['windowS']:.0f} s, c {m['concurrency']}"
    if m.get("rounds", 1) > 1:
        head += f" (median drain of {m['rounds']})"
    out.append((head, "", "", "", "", "", ""))
    for key in ("p50", "p99", "max"):
        a, b = late(bw, key), late(nd, key)
        out.append((f"  lateness {key} ms", _f(a), "", _f(b), _ratio(a, b), "", "-"))
    a, b = bw.get("drainS"), nd.get("drainS")
    out.append(("  drain: window end -> last job done, s", _f(a, 2), "", _f(b, 2), _ratio(a, b), "", "-"))
    noop = m.get("bullwait-noop") or {}
    if noop:
        cells = " / ".join(_f(late(noop, key)) for key in ("p50", "p99", "max"))
        nodes = " / ".join(_f(late(nd, key)) for key in ("p50", "p99", "max"))
        out.append(("  no-op processor (as Node's): lateness p50/p99/max ms", cells, "", nodes, "", "", "-"))
        a = noop.get("drainS")
        out.append(("  no-op processor: drain s", _f(a, 2), "", _f(b, 2), _ratio(a, b), "", "-"))
    out.append(("  CPU us per job: worker + redis", _cpu(bw), "", _cpu(nd), "", "", ""))
    for phase, label in (("redisRun", "expiring"), ("redisAdd", "adding")):
        a, b = (bw.get(phase) or {}).get("blockedMaxMs"), (nd.get(phase) or {}).get("blockedMaxMs")
        out.append(
            (
                f"  Redis blocked max ms, {label} (LATENCY, SLOWLOG)",
                _f(a, 1),
                "",
                _f(b, 1),
                _ratio(a, b),
                "<= 50 ms",
                _met(a <= 50) if a is not None else "-",
            )
        )
    mean = lambda row, phase, name: ((row.get(phase) or {}).get("perCall") or {}).get(name, {}).get("meanMs")  # noqa: E731
    a, b = mean(bw, "redisAdd", "exec"), mean(nd, "redisAdd", "exec")
    out.append(("  mean MULTI block (EXEC) ms, adding", _f(a, 2), "", _f(b, 2), _ratio(a, b), "", "-"))
    for phase, label in (("run", "expiring"), ("add", "adding"), ("idle", "idle, before the window")):
        ping = lambda row: (row.get("probe") or {}).get(phase) or {}  # noqa: E731, B023 - called in this iteration
        cell = lambda row: f"{_f(ping(row).get('max'), 1)} / {_f(ping(row).get('p99'), 1)}" if ping(row) else "-"  # noqa: E731, B023
        out.append((f"  PING max / p99 ms, {label}", cell(bw), "", cell(nd), "", "", ""))
    return out


def _notify_rows(row: dict[str, Any]) -> list[tuple[str, ...]]:
    """A notification run: the global-bound rate (>= 95% of 80/s), the whole run against its
    ceiling (the salons' when they bind), and the counts that must hold on the fake API."""
    what = f"c {row['concurrency']}, {row['n']:,} msgs / {row['salons']:,} salons"
    if row["salonLimit"]:
        what += f", salon limit {row['salonLimit']}/{row['salonWindowMs'] // 1000}s"
    limits_ok = row["maxPerSecond"] <= 80 and row["duplicates"] == 0 and row["missing"] == 0 and row["failed"] == 0
    if row["salonLimit"]:
        limits_ok = limits_ok and row["maxPerSalonWindow"] <= row["salonLimit"]
    if row.get("steady") is not None:
        out = _whole_run_rows(row, what, limits_ok)
    else:
        out = [
            (
                f"sends/s, first {row['bindingN']} (global limit binding), {what}",
                _f(row["bindingRate"], 1),
                "",
                "",
                "",
                ">= 76.0/s",
                _met(row["bindingRate"] >= 76 and limits_ok),
            )
        ]
    if row["salonLimit"] and row["n"] > row["salons"] * row["salonLimit"]:
        out.append(
            (
                "  sends/s, whole run (salon limits binding)",
                _f(row["rate"], 1),
                "",
                "",
                "",
                f">= {0.95 * row['ceiling']:.1f}/s",
                _met(row["rate"] >= 0.95 * row["ceiling"] and limits_ok),
            )
        )
    out.append(
        (
            "  max in any 1 s (read: "
            + str(row.get("maxPerSecondRead", "-"))
            + ") / dup / missing / failed / salon max",
            f"{row['maxPerSecond']} / {row['duplicates']} / {row['missing']} / {row['failed']}"
            f" / {row['maxPerSalonWindow']}",
            "",
            "",
            "",
            f"<= 80 / 0 / 0 / 0 / <= {row['salonLimit'] or '-'}",
            "",
        )
    )
    return out


def _whole_run_rows(row: dict[str, Any], what: str, limits_ok: bool) -> list[tuple[str, ...]]:
    """A run measured first send to last, and again without its ramp-up, each against 95%
    of the run's ceiling (printed beside it, with the bounds it is the least of)."""
    ceiling, target = row["ceiling"], row.get("target", round(0.95 * row["ceiling"], 1))
    goal = f">= {target:.1f}/s (0.95 x {ceiling:.1f})"
    steady = row["steady"]
    long_run, own = _f(row.get("salonsLongRun"), 1), _f(row.get("salonsOwn"), 1)
    if row.get("salonsOwn") is not None:
        bounds = f"least of global {row['global']:.1f}, salons x limit / window {long_run}, own offers {own}"
    else:  # every salon's offers fit in one window: the salons cannot hold the run back
        bounds = (
            f"global; salons x limit / window {long_run} does not bind "
            f"({row.get('offersPerSalon', '-')} offers a salon, limit {row['salonLimit'] or '-'})"
        )
    cpu = (row.get("workerCpuMsPerSend"), row.get("redisCpuMsPerSend"))
    return [
        (
            f"sends/s, whole run (first send to last), {what}",
            _f(row["rate"], 1),
            "",
            "",
            "",
            goal,
            _met(row["rate"] >= target and limits_ok),
        ),
        (
            f"  sends/s after the first {steady['skipS']:g} s ({steady['n']:,} sends)",
            _f(steady["rate"], 1),
            "",
            "",
            "",
            goal,
            _met(steady["rate"] >= target and limits_ok),
        ),
        (f"  ceiling sends/s: {bounds}", f"{ceiling:.1f}", "", "", "", "", ""),
        ("  CPU ms per send: worker + redis", f"{_f(cpu[0], 2)} + {_f(cpu[1], 2)}", "", "", "", "", ""),
    ]


def _cli(row: dict[str, Any]) -> str:
    """A bullwait command's wall / CPU ms."""
    return f"{_f(row.get('medianMs'))} / {_f(row.get('cpuMedianMs'))}"


GOAL_MS = 50  # growth: a scrape and `bullwait stats` at the largest size


def _growth_rows(g: dict[str, Any]) -> list[tuple[str, ...]]:
    """Per number of pending timers: each runtime's fill, bullwait's readers (on bullwait's
    fill) beside Bull Board's (on Node's), and each runtime's lateness among them."""
    out: list[tuple[str, ...]] = []
    sizes = g.get("sizes", [])
    first = lambda kind: (g.get(f"{sizes[0]}:{kind}") or {}).get("lateness", {}).get("p99") if sizes else None  # noqa: E731
    for n in sizes:
        bw, nd = g.get(f"{n}:bullwait") or {}, g.get(f"{n}:node") or {}
        last = n == sizes[-1]
        enq = lambda row, key: (row.get("enqueue") or {}).get(key)  # noqa: E731
        out.append(
            (
                f"growth {n:,} pending: timers added/s",
                _f(enq(bw, "rate")),
                "",
                _f(enq(nd, "rate")),
                _ratio(enq(bw, "rate"), enq(nd, "rate")),
                "",
                "-",
            )
        )
        out.append(
            (
                "  Redis bytes per pending timer",
                _f(enq(bw, "bytesPerTimer")),
                "",
                _f(enq(nd, "bytesPerTimer")),
                _ratio(enq(bw, "bytesPerTimer"), enq(nd, "bytesPerTimer")),
                "",
                "-",
            )
        )
        rd = bw.get("readers") or {}
        metrics, stats, doctor = rd.get("metrics") or {}, rd.get("stats") or {}, rd.get("doctor") or {}
        inproc = rd.get("inProcess") or {}
        board = ((nd.get("readers") or {}).get("board") or {}).get("latest") or {}
        scrape = metrics.get("medianMs")
        out.append(
            (
                "  /metrics scrape ms, median / max | Bull Board api/queues (queue page)",
                f"{_f(scrape, 1)} / {_f(metrics.get('maxMs'), 1)}",
                "",
                f"{_f(board.get('medianMs'), 1)} / {_f(board.get('maxMs'), 1)}",
                _ratio(scrape, board.get("medianMs")),
                f"<= {GOAL_MS} ms" if last else "",
                _met(scrape is not None and scrape <= GOAL_MS) if last else "-",
            )
        )
        stats_ms = inproc.get("statsMedianMs")
        out.append(
            (
                "  bullwait stats, in process ms (CLI wall / CPU ms)",
                f"{_f(stats_ms, 1)} ({_cli(stats)})",
                "",
                "",
                "",
                f"<= {GOAL_MS} ms" if last else "",
                _met(stats_ms is not None and stats_ms <= GOAL_MS) if last else "-",
            )
        )
        out.append(
            (
                "  bullwait doctor, in process ms (CLI wall / CPU ms)",
                f"{_f(inproc.get('doctorMedianMs'), 1)} ({_cli(doctor)})",
                "",
                "",
                "",
                "",
                "-",
            )
        )
        late = lambda row, key: (row.get("lateness") or {}).get(key)  # noqa: E731
        p99 = late(bw, "p99")
        flat = p99 is not None and first("bullwait") is not None and p99 <= first("bullwait") + 10
        out.append(
            (
                f"  timer lateness p50 / p99 ms ({g.get('batch', '?'):,} due, median round)",
                f"{_f(late(bw, 'p50'), 1)} / {_f(p99, 1)}",
                "",
                f"{_f(late(nd, 'p50'), 1)} / {_f(late(nd, 'p99'), 1)}",
                _ratio(p99, late(nd, "p99")),
                f"<= {_f(first('bullwait'), 1)} + 10" if last and n != sizes[0] else "",
                _met(flat) if last and n != sizes[0] else "-",
            )
        )
    startup = g.get("cliStartup") or {}
    if sizes:
        out.append(
            (
                "  (a bullwait CLI command's start-up alone, wall / CPU ms)",
                _cli(startup),
                "",
                "",
                "",
                "",
                "",
            )
        )
    return out


def render(r: dict[str, Any]) -> str:
    table = [HEAD, *rows(r)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    sep = "  ".join("-" * w for w in widths)
    header = (
        f"bullwait bench ({'quick' if r.get('quick') else 'full'}): Redis {r['redis']['version']}, "
        f"node {r.get('node')}, {r['machine']['cpus']} CPUs, load {r.get('loadAverage', '-')}, {r.get('seconds')} s"
    )
    lines = [header, line(HEAD), sep, *(line(row) for row in table[1:])] if len(table) > 1 else [header]
    return "\n".join(lines + _cluster_table(r.get("cluster")))


CLUSTER_HEAD = ("cluster section", "1 redis-server", "3-master cluster", "cluster/single")


def _cluster_table(c: dict[str, Any] | None) -> list[str]:
    """The cluster section's own table: its two columns are topologies, not runtimes."""
    if not c:
        return []
    s, k = c.get("single") or {}, c.get("cluster") or {}
    figures = (
        ("timers/s enqueued", "enqueue", "timersPerSecond", 0),
        ("bytes per pending timer (used_memory)", "enqueue", "bytesPerTimer", 0),
        ("job hash bytes (MEMORY USAGE)", "enqueue", "jobHashBytes", 0),
        ("jobs/s processed (bullwait worker)", "drain", "jobsPerSecond", 0),
        ("Redis CPU us per job (queue's master)", "drain", "redisCpuUsPerJob", 0),
        ("Redis CPU us per job (every master)", "drain", "redisCpuUsPerJobEveryMaster", 0),
        ("worker CPU us per job", "drain", "workerCpuUsPerJob", 0),
        ("timer lateness p50 ms", "lateness", "p50", 0),
        ("timer lateness p99 ms", "lateness", "p99", 0),
    )
    table = [CLUSTER_HEAD]
    for label, part, key, digits in figures:
        a, b = (s.get(part) or {}).get(key), (k.get(part) or {}).get(key)
        table.append((label, _f(a, digits), _f(b, digits), _ratio(b, a)))
    widths = [max(len(row[i]) for row in table) for i in range(len(CLUSTER_HEAD))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    load = f"load {c.get('loadAverageStart')} -> {c.get('loadAverageEnd')}"
    title = f"cluster: {c.get('masters')} masters, no replicas, same machine ({load})"
    return ["", title, fmt(table[0]), "  ".join("-" * w for w in widths), *(fmt(row) for row in table[1:])]


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report A.json [B.json ...]`: one table from the sections of several runs
    (a later file's section replaces an earlier one's)."""
    import json
    import sys

    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m bench.report bench/results/<run>.json [...]", file=sys.stderr)
        return 2
    merged: dict[str, Any] = {}
    seconds = []
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        seconds.append(str(run.get("seconds")))
        merged.update(run)
    merged["seconds"] = " + ".join(seconds)
    print(render(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
