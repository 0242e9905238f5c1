"""docker-compose.yml and monitoring/, checked without a Docker engine.

Variables are resolved as compose resolves them (`$$`, `${VAR}`, `:-`, `-`, `:?`, `?`, `:+`,
`+`; an `environment` entry without a value is taken from the shell or `.env`, else left
unset), so each test sees what a container would get. Alert rules are unit-tested with
promtool when it is installed (PATH or $PROMTOOL), and checked statically otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bullwait.settings import Settings
from bullwait.waitlist.whatsapp import CloudApiSender, build_sender

from helpers.common import ROOT

COMPOSE = ROOT / "docker-compose.yml"
REDIS_PORT_OVERRIDE = ROOT / "docker-compose.redis-port.yml"
MONITORING = ROOT / "monitoring"
# The Sentinel variables are also Settings fields; listed here so
# this file checks the compose file on its own (a name in both is harmless).
SENTINEL_ENV = {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD"}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields} | SENTINEL_ENV
BOARD_ENV = {
    "BULL_BOARD_USER",
    "BULL_BOARD_PASSWORD",
    "BULL_BOARD_AUTH",
    "BULL_BOARD_READ_ONLY",
    "BULL_BOARD_HOST",
    "BULL_BOARD_PORT",
    "BULL_BOARD_ALLOWED_HOSTS",
}
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")


class MissingVariable(Exception):
    pass


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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    """The services as `docker compose up` with no variables set resolves them."""
    return resolve(compose, {})["services"]


def test_services_and_their_dependencies(services: dict[str, Any]) -> None:
    assert set(services) >= {"redis", "worker", "bull-board", "prometheus"}
    for name in ("worker", "bull-board"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no health check"


def test_the_file_resolves_with_no_variables_and_with_auth_off(compose: dict[str, Any]) -> None:
    """`docker compose down`, `ps` or `logs` must not need the board's login, nor BULL_BOARD_AUTH=off."""
    for env in ({}, {"BULL_BOARD_AUTH": "off"}):
        try:
            resolved = resolve(compose, env)
        except MissingVariable as exc:
            pytest.fail(f"compose would refuse to run with {env or 'no variables'}: {exc}")
        board = container_env(compose["services"]["bull-board"], env)
        assert board["BULL_BOARD_AUTH"] == env.get("BULL_BOARD_AUTH", "on")
        assert "BULL_BOARD_USER" not in board and "BULL_BOARD_PASSWORD" not in board  # unset, not ""
        assert resolved["services"]["bull-board"]["restart"]


def test_redis_is_7_durable_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert re.match(r"redis:7(\.|-|$)", redis["image"])
    command = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in command, flag
    assert any(v.split(":")[0] == "redis-data" and v.endswith(":/data") for v in redis["volumes"])


def _redis_argv(compose: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Run the redis service's command in a real shell, with `printf` in place of redis-server."""
    service = compose["services"]["redis"]
    command = resolve(service["command"], env)
    assert command[:2] == ["sh", "-c"] and "exec redis-server " in command[2]
    script = command[2].replace("exec redis-server ", "printf '%s\\n' ", 1)
    shell_env = {"PATH": os.environ["PATH"], **container_env(service, env)}
    out = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.splitlines()


def test_redis_requires_redis_password_when_it_is_set(compose: dict[str, Any], tmp_path: Path) -> None:
    password = "pa ss$word"
    argv = _redis_argv(compose, {"REDIS_PASSWORD": password})
    assert argv[argv.index("--requirepass") + 1] == password
    assert "--requirepass" not in _redis_argv(compose, {})
    # compose itself never sees the password in the command (`docker compose config` prints it).
    assert password not in " ".join(resolve(compose, {"REDIS_PASSWORD": password})["services"]["redis"]["command"])
    # The health check authenticates only when there is a password (redis-cli as a stand-in).
    health = resolve(compose["services"]["redis"]["healthcheck"]["test"], {})
    assert health[0] == "CMD-SHELL"
    stub = tmp_path / "redis-cli"
    stub.write_text('#!/bin/sh\nprintf "auth=%s\\n" "${REDISCLI_AUTH-unset}" >&2\necho PONG\n')
    stub.chmod(0o755)
    for env, expected in (({"REDIS_PASSWORD": password}, f"auth={password}"), ({}, "auth=unset")):
        run = subprocess.run(
            ["sh", "-c", health[1]],
            env={"PATH": f"{tmp_path}:{os.environ['PATH']}", **env},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert run.returncode == 0 and run.stderr.strip() == expected, (env, run.stderr)


def test_worker_env_is_bullwait_settings_and_valid(compose: dict[str, Any], services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = container_env(compose["services"]["worker"], {})
    assert set(compose["services"]["worker"]["environment"]) <= SETTINGS_ENV, "not bullwait settings"
    settings = Settings(**{k.lower(): v for k, v in env.items()})  # every value validates
    assert settings.redis_host == "redis" and settings.metrics_host == "0.0.0.0"
    assert (ROOT / worker["build"]["dockerfile"]).is_file()
    assert str(settings.metrics_port) in " ".join(worker["healthcheck"]["test"])
    assert "/health/live" in " ".join(worker["healthcheck"]["test"])
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > settings.bullwait_shutdown_timeout, "docker must wait longer than the graceful shutdown"


def test_worker_receives_the_whatsapp_sender_and_redis_password(compose: dict[str, Any]) -> None:
    """What `.env` (or the shell) sets reaches the worker: a token is not silently ignored."""
    dotenv = {
        "WHATSAPP_ACCESS_TOKEN": "tok-123",
        "WHATSAPP_PHONE_NUMBER_ID": "1234567890",
        "WHATSAPP_TEMPLATE_NAME": "slot_offer",
        "REDIS_PASSWORD": "pw-1",
        "BULL_BOARD_PASSWORD": "board-pw",
    }
    worker_env = container_env(compose["services"]["worker"], dotenv)
    passed = compose["services"]["worker"]["environment"]
    missing = sorted(n for n in SETTINGS_ENV if n.startswith("WHATSAPP_") and n not in passed)
    assert not missing, f"WhatsApp settings the worker never receives: {missing}"
    settings = Settings(**{k.lower(): v for k, v in worker_env.items()})
    assert settings.whatsapp_access_token is not None and settings.whatsapp_access_token.get_secret_value() == "tok-123"
    assert settings.whatsapp_template_name == "slot_offer" and settings.redis_password == "pw-1"
    assert isinstance(build_sender(settings), CloudApiSender)
    assert "BULL_BOARD_PASSWORD" not in worker_env, "the worker gets only its own secrets"
    board_env = container_env(compose["services"]["bull-board"], dotenv)
    assert board_env["REDIS_PASSWORD"] == "pw-1" and "WHATSAPP_ACCESS_TOKEN" not in board_env
    assert board_env["BULL_BOARD_PASSWORD"] == "board-pw"


def test_bull_board_shares_the_queue_settings(compose: dict[str, Any], services: dict[str, Any]) -> None:
    env = {"BULL_BOARD_USER": "ops", "BULL_BOARD_PASSWORD": "pw"}
    board = container_env(compose["services"]["bull-board"], env)
    worker = container_env(compose["services"]["worker"], env)
    assert set(board) <= SETTINGS_ENV | BOARD_ENV, f"unknown names: {set(board) - SETTINGS_ENV - BOARD_ENV}"
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_QUEUE_DB", "BULLMQ_PREFIX", "BULLWAIT_QUEUE_NAMES"):
        assert board[name] == worker[name], name
    assert board["BULL_BOARD_USER"] == "ops" and board["BULL_BOARD_AUTH"] == "on"
    assert services["bull-board"]["ports"] == ["127.0.0.1:3001:3001"]
    assert (ROOT / "node-compat" / services["bull-board"]["build"]["dockerfile"]).is_file()


def test_redis_is_published_only_with_the_override(services: dict[str, Any]) -> None:
    assert "ports" not in services["redis"], "6379 on the host clashes with a local Redis: use the override file"
    override = yaml.safe_load(REDIS_PORT_OVERRIDE.read_text())
    assert set(override["services"]) == {"redis"} and set(override["services"]["redis"]) == {"ports"}
    assert resolve(override, {})["services"]["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert resolve(override, {"REDIS_HOST_PORT": "6380"})["services"]["redis"]["ports"] == ["127.0.0.1:6380:6379"]


def test_host_ports_bind_loopback_only(services: dict[str, Any]) -> None:
    override = resolve(yaml.safe_load(REDIS_PORT_OVERRIDE.read_text()), {})["services"]
    for name, service in [*services.items(), *override.items()]:
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def _scrape_targets() -> dict[str, set[tuple[str, int]]]:
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    targets: dict[str, set[tuple[str, int]]] = {}
    for job in scrape:
        found = targets.setdefault(job["job_name"], set())
        for sd in job.get("dns_sd_configs", []):
            found |= {(name, int(sd["port"])) for name in sd["names"]}
        for static in job.get("static_configs", []):
            found |= {(host, int(port)) for host, port in (t.rsplit(":", 1) for t in static["targets"])}
    return targets


def test_prometheus_scrapes_only_services_that_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    mounts = [v.split(":") for v in prom["volumes"]]
    assert (ROOT / next(host for host, target, *_ in mounts if target == "/etc/prometheus")) == MONITORING
    port = int(container_env(compose["services"]["worker"], {})["METRICS_PORT"])
    targets = _scrape_targets()
    assert ("worker", port) in targets["bullwait-worker"], targets
    for job, found in targets.items():
        for host, target_port in found:
            assert host in services, f"job {job} scrapes {host}:{target_port}, which no service provides: always down"
            if host == "worker":
                assert target_port == port, job


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_an_alert_fires_when_no_worker_reports_metrics() -> None:
    """Every other alert reads the workers' series; without any worker they stay silent."""
    absent = [rule for rule in _alerts() if "absent(" in rule["expr"]]
    assert absent, "no absent(...) alert: nothing fires when no worker reports metrics"
    assert any('job="bullwait-worker"' in rule["expr"] for rule in absent), absent
    assert all(rule["labels"]["severity"] == "critical" for rule in absent)


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - name: no worker target at all
    input_series: []
    alert_rule_test:
      - {{eval_time: 5m, alertname: BullwaitNoWorkerMetrics, exp_alerts: [{fires}]}}
  - name: every worker down
    input_series:
      - {{series: 'up{{job="bullwait-worker", instance="10.0.0.2:9090"}}', values: '0x10'}}
      - {{series: 'up{{job="bullwait-worker", instance="10.0.0.3:9090"}}', values: '0x10'}}
    alert_rule_test:
      - {{eval_time: 5m, alertname: BullwaitNoWorkerMetrics, exp_alerts: [{fires}]}}
  - name: one worker up is enough
    input_series:
      - {{series: 'up{{job="bullwait-worker", instance="10.0.0.2:9090"}}', values: '0x10'}}
      - {{series: 'up{{job="bullwait-worker", instance="10.0.0.3:9090"}}', values: '1x10'}}
      - {{series: 'bullmq_redis_up{{job="bullwait-worker", instance="10.0.0.3:9090"}}', values: '1x10'}}
    alert_rule_test:
      - {{eval_time: 5m, alertname: BullwaitNoWorkerMetrics, exp_alerts: []}}
      - {{eval_time: 5m, alertname: BullwaitRedisDown, exp_alerts: []}}
"""


@pytest.mark.skipif(not PROMTOOL, reason="promtool not installed (Debian package prometheus; or set PROMTOOL)")
def test_promtool_accepts_the_config_and_the_rules_fire(tmp_path: Path) -> None:
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(MONITORING / "prometheus.yml")],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = tmp_path / "alerts_test.yml"
    summary = next(r for r in _alerts() if r["alert"] == "BullwaitNoWorkerMetrics")["annotations"]["summary"]
    fires = f"{{exp_labels: {{severity: critical}}, exp_annotations: {{summary: '{summary}'}}}}"
    tests.write_text(ALERT_TESTS.format(rules=str(MONITORING / "alerts.yml"), fires=fires))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_variable_is_documented(compose: dict[str, Any]) -> None:
    readme = "\n".join(page.read_text() for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    names = set()
    for text in (COMPOSE.read_text(), REDIS_PORT_OVERRIDE.read_text()):
        doc = yaml.safe_load(text)
        for service in doc["services"].values():
            names |= set(service.get("environment", {}))
        names |= {m.group(1) or m.group(4) for m in VARIABLE.finditer(text) if m.group(0) != "$$"}
    missing = sorted(n for n in names if n and f"`{n}`" not in readme and n not in readme)
    assert not missing, f"documented nowhere in README.md or docs/: {missing}"


def test_dockerfile_runs_the_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and 'CMD ["worker"]' in text and "USER " in text
    assert Path(ROOT / ".dockerignore").read_text().count("node_modules")


# --- the `sentinel` profile ---------------------------------------------------------------
SENTINEL_SERVICES = {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
SENTINELS_SETTING = "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"


def test_the_default_profile_is_unchanged_by_the_sentinel_profile(compose: dict[str, Any]) -> None:
    """`docker compose up` starts only services without profiles; Sentinel stays off unless asked."""
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"redis", "worker", "bull-board", "prometheus"}
    for name in SENTINEL_SERVICES:
        assert compose["services"][name]["profiles"] == ["sentinel"], name
    for name in ("worker", "bull-board"):
        env = container_env(compose["services"][name], {})
        assert not {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"} & set(env), name
        assert env["REDIS_HOST"] == "redis"


def _sentinel_conf(compose: dict[str, Any], name: str, env: Mapping[str, str], data: Path) -> tuple[str, list[str]]:
    """Run a sentinel service's command in a real shell, /data in a temp dir, `printf` for redis-server."""
    service = compose["services"][name]
    command = resolve(service["command"], env)
    assert command[:2] == ["sh", "-c"] and "exec redis-server " in command[2]
    script = command[2].replace("/data/", f"{data}/").replace("exec redis-server ", "printf '%s\\n' ", 1)
    shell_env = {"PATH": os.environ["PATH"], **container_env(service, env)}
    out = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=True, timeout=10)
    return (data / "sentinel.conf").read_text(), out.stdout.splitlines()


def test_sentinel_profile_is_a_replica_and_three_sentinels_the_worker_and_board_can_use(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = {"COMPOSE_PROFILES": "sentinel", "REDIS_SENTINELS": SENTINELS_SETTING}
    services = resolve(compose, env)["services"]
    replica = " ".join(services["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica and "--replica-announce-ip redis-replica" in replica
    # What the header tells users to set names exactly the profile's sentinels, on their port.
    for name in ("worker", "bull-board"):
        assert container_env(compose["services"][name], env)["REDIS_SENTINELS"] == SENTINELS_SETTING, name
    listed = {tuple(entry.split(":")) for entry in SENTINELS_SETTING.split(",")}
    sentinels = {n for n in services if n.startswith("sentinel-")}
    assert {host for host, _ in listed} == sentinels and len(sentinels) == 3
    for number, host in enumerate(sorted(sentinels), 1):
        data = tmp_path / host
        data.mkdir()
        conf, argv = _sentinel_conf(compose, host, env, data)
        assert argv == [f"{data}/sentinel.conf", "--sentinel"]
        lines = conf.splitlines()
        assert "port 26379" in lines and f"sentinel announce-ip sentinel-{number}" in lines
        assert "sentinel monitor mymaster redis 6379 2" in lines and "sentinel resolve-hostnames yes" in lines
        assert not any("auth-pass" in line or "requirepass" in line for line in lines)
        assert services[host]["volumes"] == [f"{host}-data:/data"], "a sentinel must keep what it learned"
        # A sentinel rewrites its file; a restart keeps that, not the first one.
        (data / "sentinel.conf").write_text("learned\n")
        assert _sentinel_conf(compose, host, env, data)[0] == "learned\n"


def test_sentinel_profile_passwords_reach_the_nodes_and_sentinels_only_at_run_time(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = {
        "REDIS_SENTINELS": SENTINELS_SETTING,
        "REDIS_PASSWORD": "data pw$1",
        "REDIS_SENTINEL_PASSWORD": "sent-pw",
        "REDIS_SENTINEL_MASTER": "queues",
    }
    resolved = resolve(compose, env)
    assert "data pw$1" not in str(resolved["services"]) and "sent-pw" not in str(resolved["services"])
    conf, _ = _sentinel_conf(compose, "sentinel-2", env, tmp_path)
    lines = conf.splitlines()
    assert "sentinel monitor queues redis 6379 2" in lines and "sentinel auth-pass queues data pw$1" in lines
    assert "requirepass sent-pw" in lines and "sentinel sentinel-pass sent-pw" in lines
    # Either data node may be demoted to a replica: both need masterauth as well as requirepass.
    for name in ("redis", "redis-replica"):
        argv = _redis_argv_of(compose, name, env)
        assert argv[argv.index("--requirepass") + 1] == "data pw$1", name
        assert argv[argv.index("--masterauth") + 1] == "data pw$1", name
    board = container_env(compose["services"]["bull-board"], env)
    assert (board["REDIS_SENTINEL_PASSWORD"], board["REDIS_SENTINEL_MASTER"]) == ("sent-pw", "queues")


def _redis_argv_of(compose: dict[str, Any], name: str, env: Mapping[str, str]) -> list[str]:
    service = compose["services"][name]
    command = resolve(service["command"], env)
    script = command[2].replace("exec redis-server ", "printf '%s\\n' ", 1)
    shell_env = {"PATH": os.environ["PATH"], **container_env(service, env)}
    out = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.splitlines()
