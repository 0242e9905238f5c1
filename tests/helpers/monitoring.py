"""Reading a live monitoring server: its listening log line, /metrics samples, /health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def listening(log_text: str) -> dict[str, Any]:
    """The `monitoring server listening` log record (JSON lines)."""
    for line in log_text.splitlines():
        if "monitoring server listening" in line:
            return json.loads(line)
    raise AssertionError(f"no 'monitoring server listening' in log:\n{log_text}")


def get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/health/queues")
    return status, json.loads(body)
