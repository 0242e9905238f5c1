"""docker-compose.yml and monitoring/, checked without a Docker engine.

Variables are resolved as compose resolves them (helpers.compose), so each test sees what a
container would get. Alert rules are unit-tested with
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
from helpers.compose import COMPOSE, VARIABLE, MissingVariable, container_env, exec_argv, load_compose, resolve

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
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    """The services as `docker compose up` with no variables set resolves them."""
    return resolve(compose, {})["services"]


def test_services_and_their_dependencies(services: dict[str, Any]) -> None:
    assert set(services) >= {"redis", "worker", "bull-board", "prometheus"}
    for name in ("worker", "bull-board"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"
    one_shots = one_shot_services(services)
    for name, service in services.items():
        if name in one_shots:  # it exits when done: a health check would mark it unhealthy
            assert service.get("restart") == "no" and "healthcheck" not in service, name
            continue
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no health check"


def one_shot_services(services: dict[str, Any]) -> set[str]:
    """Services another waits for to complete (`service_completed_successfully`)."""
    return {
        dependency
        for service in services.values()
        for dependency, condition in (service.get("depends_on") or {}).items()
        if condition.get("condition") == "service_completed_successfully"
    }


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


def test_redis_requires_redis_password_when_it_is_set(compose: dict[str, Any], tmp_path: Path) -> None:
    password = "pa ss$word"
    argv = exec_argv(compose, "redis", {"REDIS_PASSWORD": password})
    assert argv[argv.index("--requirepass") + 1] == password
    assert "--requirepass" not in exec_argv(compose, "redis", {})
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
CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]
CLUSTER_SERVICES = {*CLUSTER_NODES, "redis-cluster-create", "worker-cluster", "bull-board-cluster"}
SENTINELS_SETTING = "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"


def test_the_default_profile_is_unchanged_by_the_sentinel_and_cluster_profiles(compose: dict[str, Any]) -> None:
    """`docker compose up` starts only services without profiles; Sentinel and Cluster stay off unless asked."""
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"redis", "worker", "bull-board", "prometheus"}
    for name in SENTINEL_SERVICES:
        assert compose["services"][name]["profiles"] == ["sentinel"], name
    for name in CLUSTER_SERVICES:
        assert compose["services"][name]["profiles"] == ["cluster"], name
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
        argv = exec_argv(compose, name, env)
        assert argv[argv.index("--requirepass") + 1] == "data pw$1", name
        assert argv[argv.index("--masterauth") + 1] == "data pw$1", name
    board = container_env(compose["services"]["bull-board"], env)
    assert (board["REDIS_SENTINEL_PASSWORD"], board["REDIS_SENTINEL_MASTER"]) == ("sent-pw", "queues")


# --- the `cluster` profile ----------------------------------------------------------------


def _node_argv(compose: dict[str, Any], name: str, env: Mapping[str, str], tmp_path: Path) -> list[str]:
    """A cluster node's redis-server argv, `hostname` answering the service's host name."""
    stubs = tmp_path / name
    stubs.mkdir(exist_ok=True)
    (stubs / "hostname").write_text(f"#!/bin/sh\necho {compose['services'][name]['hostname']}\n")
    (stubs / "hostname").chmod(0o755)
    return exec_argv(compose, name, env, path=str(stubs))


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _create(
    compose: dict[str, Any], env: Mapping[str, str], tmp_path: Path, slots_assigned: int
) -> tuple[int, str, list[str]]:
    """Run redis-cluster-create's script with a stand-in redis-cli that answers CLUSTER INFO with
    `slots_assigned` and records every call; (exit code, stdout, the calls)."""
    stubs = tmp_path / f"cli-{slots_assigned}"
    stubs.mkdir()
    calls = stubs / "calls"
    (stubs / "redis-cli").write_text(
        "#!/bin/sh\n"
        f'echo "auth=${{REDISCLI_AUTH-unset}} $*" >> {calls}\n'
        'case "$*" in *"cluster info"*)\n'
        f'  printf "cluster_state:ok\\ncluster_slots_assigned:{slots_assigned}\\n";;\n'
        "esac\n"
    )
    (stubs / "redis-cli").chmod(0o755)
    service = compose["services"]["redis-cluster-create"]
    command = resolve(service["command"], env)
    assert command[:2] == ["sh", "-c"]
    shell_env = {"PATH": f"{stubs}:{os.environ['PATH']}", **container_env(service, env)}
    run = subprocess.run(["sh", "-c", command[2]], env=shell_env, capture_output=True, text=True, timeout=10)
    return run.returncode, run.stdout, calls.read_text().splitlines() if calls.exists() else []


def test_cluster_profile_is_six_nodes_the_worker_and_board_reach(compose: dict[str, Any], tmp_path: Path) -> None:
    from bullwait.settings import parse_cluster_nodes

    services = resolve(compose, {})["services"]
    nodes: set[tuple[str, int]] = set()
    for name in CLUSTER_NODES:
        node = services[name]
        assert re.match(r"redis:7(\.|-|$)", node["image"]), "host names in CLUSTER SLOTS need Redis 7"
        assert node["hostname"] == name and node["volumes"] == [f"{name}-data:/data"], name
        assert f"{name}-data" in compose["volumes"], name
        assert node["healthcheck"]["test"] and node["restart"] == "unless-stopped"
        argv = _node_argv(compose, name, {}, tmp_path)
        assert _flag(argv, "--cluster-enabled") == "yes"
        assert _flag(argv, "--cluster-config-file").startswith("/data/"), "nodes.conf must outlive the container"
        # Clients get the service name, which the compose network resolves, not an address.
        assert _flag(argv, "--cluster-announce-hostname") == name
        assert _flag(argv, "--cluster-preferred-endpoint-type") == "hostname"
        for flag, value in (
            ("--appendonly", "yes"),
            ("--appendfsync", "everysec"),
            ("--maxmemory-policy", "noeviction"),
        ):
            assert _flag(argv, flag) == value, (name, flag)
        assert "--requirepass" not in argv
        nodes.add((name, int(_flag(argv, "--port"))))
    assert len(nodes) == 6

    # The one-shot joins exactly those nodes: 3 masters, one replica each.
    code, out, calls = _create(compose, {}, tmp_path, slots_assigned=0)
    assert code == 0, out
    create = next(call.split()[1:] for call in calls if "--cluster create" in call)
    listed = {(host, int(port)) for host, port in (a.split(":") for a in create if ":" in a)}
    assert listed == nodes and _flag(create, "--cluster-replicas") == "1" and "--cluster-yes" in create
    assert len(nodes) // (1 + int(_flag(create, "--cluster-replicas"))) == 3
    create_service = services["redis-cluster-create"]
    assert {n: c["condition"] for n, c in create_service["depends_on"].items()} == dict.fromkeys(
        CLUSTER_NODES, "service_healthy"
    )

    # The worker and the board: the same nodes, settings a cluster accepts, started once it exists.
    for name in ("worker-cluster", "bull-board-cluster"):
        env = container_env(compose["services"][name], {})
        assert set(env) <= SETTINGS_ENV | BOARD_ENV, name
        assert not {"REDIS_HOST", "REDIS_URL", "REDIS_SENTINELS"} & set(env), f"{name}: a second topology"
        assert set(parse_cluster_nodes(env["REDIS_CLUSTER_NODES"])) == nodes, name
        settings = Settings(**{k.lower(): v for k, v in env.items() if not k.startswith("BULL_BOARD_")})
        assert settings.cluster is not None and settings.redis_queue_db == 0 and settings.bullmq_prefix == "{bull}"
        assert services[name]["depends_on"] == {"redis-cluster-create": {"condition": "service_completed_successfully"}}
    worker, board = services["worker-cluster"], services["bull-board-cluster"]
    assert worker["image"] == services["worker"]["image"] and worker["healthcheck"] == services["worker"]["healthcheck"]
    board_env = container_env(compose["services"]["bull-board-cluster"], {})
    assert board["ports"] == [f"127.0.0.1:3002:{board_env['BULL_BOARD_PORT']}"]
    assert board["ports"][0].split(":")[1] != services["bull-board"]["ports"][0].split(":")[1]
    tagged = container_env(compose["services"]["worker-cluster"], {"BULLWAIT_QUEUE_NAMES": "tagged"})
    assert Settings(**{k.lower(): v for k, v in tagged.items()}).bullmq_prefix == "bull"


def test_cluster_profile_password_reaches_every_node_the_create_and_the_clients(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = {"REDIS_PASSWORD": "cluster pw$1"}
    assert "cluster pw$1" not in str(resolve(compose, env)["services"]), "compose itself would print it"
    for name in CLUSTER_NODES:
        argv = _node_argv(compose, name, env, tmp_path)
        # A master may become a replica after a failover: masterauth as well as requirepass.
        assert _flag(argv, "--requirepass") == _flag(argv, "--masterauth") == "cluster pw$1", name
    code, _, calls = _create(compose, env, tmp_path, slots_assigned=0)
    assert code == 0 and calls and all(call.startswith("auth=cluster pw$1 ") for call in calls), calls
    for name in ("worker-cluster", "bull-board-cluster"):
        assert container_env(compose["services"][name], env)["REDIS_PASSWORD"] == "cluster pw$1", name


def test_cluster_create_runs_once(compose: dict[str, Any], tmp_path: Path) -> None:
    """A later `up` finds the slots assigned (the nodes keep nodes.conf) and creates nothing."""
    code, out, calls = _create(compose, {}, tmp_path, slots_assigned=16384)
    assert code == 0 and "already created" in out
    assert not any("--cluster create" in call for call in calls), calls
