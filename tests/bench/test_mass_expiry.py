"""The mass expiry bench's own arithmetic (bench/mass_expiry.py); no timing is measured here."""

from __future__ import annotations

from bench.mass_expiry import median_run, next_lead, window_stats


def test_window_stats_counts_only_the_probes_inside_the_window() -> None:
    samples = [(0.9, 500.0), (1.0, 2.0), (1.5, 60.0), (1.7, 4.0), (2.0, 900.0)]
    stats = window_stats(samples, 1.0, 2.0)
    assert stats == {"n": 3, "p50": 4.0, "p99": 60.0, "max": 60.0, "over50": 1}
    assert window_stats(samples, 3.0, 4.0) == {"n": 0, "p50": None, "p99": None, "max": None, "over50": 0}


def test_the_lead_outlasts_the_slowest_add_so_far() -> None:
    assert next_lead(100_000, []) == 60.0
    assert next_lead(100_000, [3.0, 40.0]) == 85.0
    assert next_lead(100_000, [0.5]) == 15.0, "never shorter than 5 s + 1 s per 10,000 timers"


def test_median_run_picks_the_middle_drain() -> None:
    rows = [{"drainS": 3.0, "id": "a"}, {"drainS": 1.0, "id": "b"}, {"drainS": None, "id": "c"}]
    assert median_run(rows)["id"] == "a", "a run that never drained counts as the slowest"
    assert median_run(rows[:2])["id"] == "b"
